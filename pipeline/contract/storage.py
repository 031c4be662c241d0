"""Where files live: the one door to local folders and fsspec URLs (s3://, gs://, az://, file://, memory://).

Every release, plan, job folder and index is read and written through these functions, so the
same code runs on a laptop's disk and on a cluster whose nodes share only an object store.

Rules it keeps:
- **Never silent.** A scheme fsspec does not know, or one whose filesystem is not installed, is one
  `UserError` line naming the scheme and the extra to install; a known scheme written with a slash
  missing (`s3:/bucket`) is refused rather than taken for a local folder named `s3:`.
- **Complete or not at all** (`publish_bytes`, `publish_file`, `copy`). Local: a temporary name in
  the same folder, fsync, rename. Object stores: one PUT (or a multipart upload completed only once
  every part is sent) of data that is already whole; never a streamed `open(..., "wb")` (fsspec
  commits a half-written stream on any exception) and never a rename (S3 has none).
- **Fresh answers.** s3fs caches listings; `exists`, `size` and `listing` drop that cache first, so a
  "skip what is done" check sees what other processes wrote since.
Local paths use the standard library directly: fsspec is only imported for URLs.
"""
from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import re
import shutil
from urllib.parse import unquote, urlparse

from .errors import UserError, first_line, short_error
from .ids import sha256_stream

# scheme → (the package that implements it, the tsdistill extra that installs it)
EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
          "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"),
          "adl": ("adlfs", "azure")}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
TMP_MARK = ".tmp-"   # local temporary names: `.<name>.tmp-<pid>`, next to the final file


def scheme_of(target) -> str | None:
    """'s3' for 's3://b/x', None for a plain path (and for 'file://' too: it is local)."""
    text = str(target)
    if "://" not in text:
        return None
    scheme = text.split("://", 1)[0].split("::")[-1].lower()
    return None if scheme in ("file", "local") else scheme


def is_url(target) -> bool:
    """True for a non-local fsspec URL (s3://, gs://, memory://, ...)."""
    check(target)
    return scheme_of(target) is not None


def is_local(target) -> bool:
    return not is_url(target)


def check(target) -> None:
    """Refuse a known scheme missing its '//' ('s3:/bucket', 's3:bucket'): it would become a local
    folder named 's3:' without a word."""
    text = str(target)
    match = _SCHEME.match(text)
    if match and not text[match.end():].startswith("//") and len(match.group(1)) > 1:
        scheme = match.group(1).lower()
        if scheme in EXTRAS or scheme in _known_protocols():
            raise UserError(f"{text}: not a URL ({scheme}: without '//'; write {scheme}://...) and "
                            "not meant as a local path")


@functools.lru_cache(maxsize=1)
def _known_protocols() -> frozenset:
    import fsspec

    return frozenset(fsspec.available_protocols()) | frozenset(EXTRAS) | {"file", "local"}


def local_path(target) -> str:
    """The filesystem path of a local target (a plain path or a file:// URL)."""
    text = str(target)
    if text.startswith("file://"):
        return unquote(urlparse(text).path)
    return os.path.expanduser(text)


def absolute(target) -> str:
    """A local path made absolute (what Ray actors on other nodes and later commands need); URLs as they are."""
    if is_url(target):
        _filesystem(str(target))  # an unknown or uninstalled scheme fails here, before any work
        return str(target)
    return os.path.abspath(local_path(target))


# the cwd of a `ray job submit` entrypoint: a per-node copy of the working dir, deleted after the job
RAY_PACKAGE_DIR = "runtime_resources/working_dir_files/"


def location(target, what: str = "--out") -> str:
    """An output location as every node and later command can reach it: a URL as given (its scheme
    checked), a local path made absolute. A relative path inside a Ray job's package folder (a
    scratch copy on one node, deleted after the job) is refused."""
    if target is None:
        raise UserError(f"{what} is required")
    text = str(target)
    if is_local(text) and not os.path.isabs(local_path(text)) and RAY_PACKAGE_DIR in os.getcwd().replace(os.sep, "/"):
        raise UserError(f"{what} {text}: a relative path inside a Ray job lands in Ray's temporary package folder "
                        f"({os.getcwd()}), which is deleted after the job and differs per node; give an absolute "
                        "path on a disk every node mounts, or a URL (s3://bucket/...)")
    return absolute(text)


def join(root, *names: str) -> str:
    """`names` inside `root` (a folder or a URL), '/'-separated: never normalised, which would turn
    's3://b' into 's3:/b'."""
    out = str(root)
    for name in names:
        out = f"{out.rstrip('/')}/{str(name).lstrip('/')}" if name else out
    return out


def parent(target) -> str:
    text = str(target).rstrip("/")
    return text.rsplit("/", 1)[0] if "/" in text else "."


def basename(target) -> str:
    return str(target).rstrip("/").rsplit("/", 1)[-1]


# -- the filesystem of a URL ---------------------------------------------------------------------
def _filesystem(url: str):
    """(fs, path) of a URL; an unknown or uninstalled scheme is one UserError line."""
    scheme = scheme_of(url)
    if scheme not in _known_protocols():
        raise UserError(f"{url}: unknown storage scheme '{scheme}://' (use a local path, file://, memory://, "
                        "s3://, gs:// or az://)")
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(url)
    except ImportError:
        package, extra = EXTRAS.get(scheme, (None, None))
        if package is None:
            from fsspec.registry import known_implementations

            package = known_implementations.get(scheme, {}).get("class", scheme).split(".")[0]
        hint = f"pip install 'tsdistill[{extra}]'" if extra else f"pip install {package}"
        raise UserError(f"{url}: the {scheme}:// scheme needs the {package} package ({hint})") from None
    except Exception as e:  # noqa: BLE001 - a store that cannot start (hdfs without a JVM, bad options)
        raise UserError(f"{url}: cannot open this storage: {first_line(e)}") from None


def filesystem(target):
    """(fsspec filesystem, path) of any target; local ones too (for libraries that take an fs)."""
    if is_url(target):
        return _filesystem(str(target))
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), absolute(target)


@contextlib.contextmanager
def _remote_errors(url: str):
    """A remote store's own failures (no credentials, endpoint down) as one line naming the URL;
    OSErrors (FileNotFoundError above all) stay what they are, for callers to decide."""
    try:
        yield
    except (OSError, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - botocore, google-auth, azure raise their own types
        raise UserError(f"{url}: storage error: {short_error(e)}") from None


def _fresh(fs, path: str) -> None:
    """Drop cached listings of `path` and its parents (s3fs answers exists/info from them)."""
    with contextlib.suppress(Exception):
        fs.invalidate_cache(path)


# -- reading -------------------------------------------------------------------------------------
def _fresh_answer(target, local, remote):
    """`local(path)` for a local target, else `remote(fs, path)` after dropping cached listings."""
    if is_local(target):
        return local(local_path(target))
    fs, path = _filesystem(str(target))
    with _remote_errors(str(target)):
        _fresh(fs, path)
        return remote(fs, path)


def exists(target) -> bool:
    return _fresh_answer(target, os.path.exists, lambda fs, path: fs.exists(path))


def isfile(target) -> bool:
    return _fresh_answer(target, os.path.isfile, lambda fs, path: fs.isfile(path))


def size(target) -> int | None:
    """Bytes of a file, None when there is none."""
    def local(path):
        return os.stat(path).st_size if os.path.isfile(path) else None

    def remote(fs, path):
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") != "directory" else None
    return _fresh_answer(target, local, remote)


def read_bytes(target) -> bytes:
    """The whole file (FileNotFoundError when there is none)."""
    if is_local(target):
        with open(local_path(target), "rb") as f:
            return f.read()
    fs, path = _filesystem(str(target))
    with _remote_errors(str(target)):
        return fs.cat_file(path)


def read_many(targets: list) -> dict:
    """{target: bytes or None (missing)} for many small files; remote ones fetched concurrently."""
    out = {}
    remote: dict = {}
    for target in targets:
        if is_local(target):
            try:
                out[target] = read_bytes(target)
            except OSError:
                out[target] = None
        else:
            fs, path = _filesystem(str(target))
            remote.setdefault(id(fs), (fs, {}))[1][path] = target
    for fs, paths in remote.values():
        with _remote_errors(next(iter(paths.values()))):
            _fresh(fs, posixpath.dirname(next(iter(paths))))
            got = fs.cat(list(paths), on_error="omit")
        for path, target in paths.items():
            data = got.get(path)
            if data is None:  # fsspec may key results by the path as it spells it
                data = got.get(fs._strip_protocol(path))
            out[target] = data if isinstance(data, bytes) else None
    return out


def open_read(target, block_size: int = 8 << 20):
    """A binary file object for reading (seekable: pyarrow reads Parquet footers through it)."""
    if is_local(target):
        return open(local_path(target), "rb")
    fs, path = _filesystem(str(target))
    with _remote_errors(str(target)):
        return fs.open(path, "rb", block_size=block_size)


def listing(folder) -> dict[str, int]:
    """{name: bytes} of the files directly inside `folder` (empty when it does not exist); fresh."""
    if is_local(folder):
        try:
            with os.scandir(local_path(folder)) as entries:
                return {e.name: e.stat().st_size for e in entries if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            return {}
    fs, path = _filesystem(str(folder))
    with _remote_errors(str(folder)):
        _fresh(fs, path)
        try:
            entries = fs.ls(path, detail=True)
        except FileNotFoundError:
            return {}
    return {posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0) for e in entries
            if e.get("type") == "file"}


def walk_files(folder) -> list[str]:
    """Paths of every file under `folder`, relative to it, '/'-separated and sorted."""
    if is_local(folder):
        root = local_path(folder)
        found = []
        for dirpath, _, files in os.walk(root):
            found += [os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/") for f in files]
        return sorted(found)
    fs, path = _filesystem(str(folder))
    with _remote_errors(str(folder)):
        _fresh(fs, path)
        try:
            names = fs.find(path)
        except FileNotFoundError:
            return []
    base = path.rstrip("/") + "/"
    return sorted(n[len(base):] for n in names if n.startswith(base))


def sha256(target, chunk: int = 8 << 20) -> str:
    """The sha256 of a local file or an object (local paths: `ids.sha256_file` does the same)."""
    with open_read(target) as f:
        return sha256_stream(f, chunk)


# -- writing -------------------------------------------------------------------------------------
def _local_tmp(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def _replacing(path: str):
    """A temporary name next to local `path`; fsync'd and renamed over it when the block succeeds."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _local_tmp(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _put(target, upload) -> None:
    """`upload(fs, path)` to an object store: data already whole goes up in one PUT (or a multipart
    upload completed at its end, aborted on failure), so nothing partial ever appears."""
    fs, path = _filesystem(str(target))
    with _remote_errors(str(target)):
        try:
            upload(fs, path)
        except FileNotFoundError as e:  # s3fs: "The specified bucket does not exist"; none is created
            raise UserError(f"{target}: cannot write: {e}") from None
        _fresh(fs, path)


def publish_bytes(target, data: bytes) -> None:
    """Write `data` to `target` so that readers see the whole file or none of it."""
    if is_local(target):
        with _replacing(local_path(target)) as tmp, open(tmp, "wb") as f:
            f.write(data)
    else:
        _put(target, lambda fs, path: fs.pipe_file(path, bytes(data)))


def publish_file(local_file: str, target) -> None:
    """Publish a finished local file as `target`, complete or not at all."""
    if is_local(target):
        with _replacing(local_path(target)) as tmp:
            shutil.copyfile(local_file, tmp)
    else:
        _put(target, lambda fs, path: fs.put_file(local_file, path))


@contextlib.contextmanager
def publishing(target):
    """A local file to write `target` into, published (complete or not at all) when the block ends
    without an error; for big outputs written by a library (Parquet), never held in memory whole."""
    if is_local(target):
        with _replacing(local_path(target)) as tmp:
            yield tmp
        return
    import tempfile

    _filesystem(str(target))  # an unknown scheme fails before the work
    fd, tmp = tempfile.mkstemp(prefix="tsd-publish-", suffix=f"-{basename(target)}")
    os.close(fd)
    try:
        yield tmp
        publish_file(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def copy(src, dst) -> None:
    """Copy one file, published complete or not at all (server-side within one object store)."""
    if is_url(src) and is_url(dst) and scheme_of(src) == scheme_of(dst):
        fs, path = _filesystem(str(src))
        _, dst_path = _filesystem(str(dst))
        with _remote_errors(str(dst)):
            fs.copy(path, dst_path)
            _fresh(fs, dst_path)
    elif is_local(src):
        publish_file(local_path(src), dst)
    else:
        publish_bytes(dst, read_bytes(src))


def remove(target) -> None:
    """Delete a file; nothing when it is already gone."""
    if is_local(target):
        with contextlib.suppress(FileNotFoundError):
            os.remove(local_path(target))
        return
    fs, path = _filesystem(str(target))
    with _remote_errors(str(target)), contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)
        _fresh(fs, path)


def make_folder(target) -> None:
    """A local folder is created; object stores have no folders (nothing to do)."""
    if is_local(target):
        os.makedirs(local_path(target), exist_ok=True)


def is_empty_or_missing(folder) -> bool:
    if is_local(folder):
        path = local_path(folder)
        return not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path))
    return not walk_files(folder)


# -- a local copy of a remote file (weights) -------------------------------------------------------
def cache_dir() -> str:
    return os.environ.get("TSD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tsdistill")


def cached_local(target, expected_sha256: str | None, what: str = "file") -> str:
    """A local path holding `target`: the path itself when local; a URL is downloaded once per machine
    into the cache (TSD_CACHE, default ~/.cache/tsdistill) and checked against `expected_sha256`."""
    if is_local(target):
        return local_path(target)
    if not expected_sha256:
        raise UserError(f"{target}: a {what} URL needs its expected sha256 (the download is checked against it)")
    expected = expected_sha256.lower()
    folder = os.path.join(cache_dir(), "downloads", expected)
    path = os.path.join(folder, basename(target) or "file")
    if os.path.isfile(path):  # only ever renamed into place after its digest matched
        return path
    os.makedirs(folder, exist_ok=True)
    tmp = _local_tmp(path)
    fs, remote = _filesystem(str(target))
    try:
        with _remote_errors(str(target)):
            try:
                fs.get_file(remote, tmp)
            except FileNotFoundError:
                raise UserError(f"{target}: {what} not found") from None
        digest = sha256(tmp)
        if digest != expected:
            raise UserError(f"{target}: sha256 {digest} differs from the configured {expected}")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    return path

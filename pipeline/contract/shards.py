"""Shards: deterministic tar bytes, the one tar reader, publishing a shard and its stats (the done marker)."""
from __future__ import annotations

import io
import tarfile
from typing import Iterable

from . import storage
from .files import json_bytes, parse_json, read_json
from .ids import fingerprint, sha256_bytes
from .images import IMAGE_FORMATS
from .layout import SHARD_SUFFIX, STATS_SUFFIX, shard_kind_split
from .samples import M_JSON, group_members


def tar_bytes(samples: list[tuple[str, dict]]) -> bytes:
    """A shard's tar in memory. Fixed mtime/owner/mode and member order: reruns are byte-identical."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            if "." in key or "/" in key:
                raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
            for ext in sorted(members, key=_member_order):
                data = members[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _member_order(ext: str) -> tuple:
    # image first, then json, then arrays: readers that stream can start decoding early
    if ext in IMAGE_FORMATS:
        return (0, ext)
    return (1, ext) if ext == M_JSON else (2, ext)


def read_shard(fileobj, where: str = "") -> Iterable[tuple[str, dict]]:
    """(key, {member: bytes}) for each sample of a shard tar (a path or a binary file object).

    Reads members into memory; never extracts to disk, so member names cannot reach the filesystem.
    A damaged tar raises ValueError('<where>: …') after the samples read before the damage."""
    def members():
        with tarfile.open(fileobj=fileobj, mode="r|") if hasattr(fileobj, "read") \
                else tarfile.open(fileobj, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    raise ValueError(f"{where}: tar member {info.name!r} is not a regular file")
                yield info.name, tar.extractfile(info).read()

    try:
        yield from group_members(members(), where)
    except tarfile.TarError as e:
        raise ValueError(f"{where}: not a readable tar: {e}") from None


def open_shard(url: str):
    """A shard for reading: a local path, a file:// URL or any fsspec URL (`contract.storage`)."""
    return storage.open_read(url)


def iter_shard_samples(url: str) -> Iterable[dict]:
    """The samples of the shard at `url` as webdataset-style dicts: {'__key__', '__url__', member: bytes}."""
    with open_shard(url) as f:
        for key, members in read_shard(f, url):
            yield {"__key__": key, "__url__": url, **members}


def shard_url(root, name: str) -> str:
    return storage.join(root, f"{name}{SHARD_SUFFIX}")


def stats_url(root, name: str) -> str:
    return storage.join(root, f"{name}{STATS_SUFFIX}")


def publish_shard(root, name: str, data: bytes, stats: dict) -> dict:
    """Publish shard `name` (e.g. 'mix/mix-000002') under `root` (a folder or a URL): the tar first,
    each complete or not at all, then its stats.

    The stats file is the done-marker: a shard with a tar but no stats is redone on rerun."""
    stats = dict(stats, shard=name, bytes=len(data), sha256=sha256_bytes(data))
    storage.publish_bytes(shard_url(root, name), data)
    storage.publish_bytes(stats_url(root, name), json_bytes(stats))
    return stats


# What made a shard, recorded in its stats: the fields and how a difference is named.
IDENTITY_FIELDS = {"plan": "plan fingerprint differs", "head_sha256": "head sha256 differs",
                   "teacher_weights": "teacher weights sha256 differs", "generator_weights": "generator weights differ"}
NO_IDENTITY = "no identity recorded (made before shards recorded what made them)"


def shard_identity(name: str, plan: str, head_sha256: str, teacher_weights: str | None,
                   generator_files: dict | None) -> dict:
    """The identity of shard `name`: the one definition generate, release and verify ask.
    `plan`: the plan's fingerprint; `head_sha256`: the teacher head file's; `teacher_weights`: the
    sha256 of the teacher's weight file (None: built from its config); `generator_files`: {file:
    sha256} of the generator's weights (the manifest's generator.files). A real shard owes nothing
    to the generator: only mixes record it."""
    mix = shard_kind_split(name)[0] == "mix"
    return {"plan": plan, "head_sha256": head_sha256, "teacher_weights": teacher_weights,
            "generator_weights": fingerprint(generator_files) if mix and generator_files else None}


def manifest_shard_identity(manifest: dict, name: str) -> dict:
    """The identity shard `name` must carry to belong to the release `manifest` describes."""
    teacher, generator = manifest.get("teacher") or {}, manifest.get("generator") or {}
    return shard_identity(name, manifest.get("plan_fingerprint"), teacher.get("head_sha256"),
                          (teacher.get("weights") or {}).get("sha256"), generator.get("files"))


def stale_reason(stats: dict, identity: dict) -> str | None:
    """What differs between the identity a shard's stats record and `identity`; None when they agree.
    A shard that records none is stale: nothing says what made it."""
    if any(key not in stats for key in IDENTITY_FIELDS):
        return NO_IDENTITY
    for key, what in IDENTITY_FIELDS.items():
        if stats[key] != identity[key]:
            return what
    return None


def _checked(stats, tar_bytes: int | None, identity: dict | None) -> dict | None:
    if not isinstance(stats, dict) or tar_bytes is None or stats.get("bytes") != tar_bytes:
        return None
    if identity is not None and stale_reason(stats, identity) is not None:
        return None
    return stats


def read_stats(root, name: str, identity: dict | None = None) -> dict | None:
    """The stats of a finished shard, or None when it is not done, its tar went missing, or it
    was made by something else than `identity` (its `shard_identity`, when given)."""
    return _checked(read_json(stats_url(root, name)), storage.size(shard_url(root, name)), identity)


def iter_finished_shards(root, names: Iterable[str], identity=None, keep=lambda stats: stats):
    """(name, keep(stats)) of the finished shards among `names`, in their order: one listing per
    shard folder, then the stats files of the shards listed with a tar, read 256 at a time
    (concurrently from object storage). A consumer holds what it keeps of each batch only; `keep`
    trims it further (the driver drops the per-sample records). `identity`: None (any maker), or a
    function of the shard's name giving its `shard_identity`: shards made by another are left out."""
    names = list(names)
    listings: dict[str, dict[str, int]] = {}
    for name in names:
        folder = name.rpartition("/")[0]
        if folder not in listings:
            listings[folder] = storage.listing(storage.join(root, folder) if folder else root)

    def tar_size(name: str) -> int | None:
        folder, _, base = name.rpartition("/")
        files = listings[folder]
        return files.get(f"{base}{SHARD_SUFFIX}") if f"{base}{STATS_SUFFIX}" in files else None

    candidates = [n for n in names if tar_size(n) is not None]
    for start in range(0, len(candidates), 256):
        batch = candidates[start:start + 256]
        data = storage.read_many([stats_url(root, n) for n in batch])
        for name in batch:
            stats = _checked(parse_json(data[stats_url(root, name)]), tar_size(name),
                             identity(name) if identity is not None else None)
            if stats is not None:
                yield name, keep(stats)


def finished_shards(root, names: Iterable[str], identity=None, keep=lambda stats: stats) -> dict[str, dict]:
    """{name: keep(stats)} of the finished shards among `names` (see `iter_finished_shards`)."""
    return dict(iter_finished_shards(root, names, identity, keep))

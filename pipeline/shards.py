"""Writing shards: deterministic tar bytes, published atomically, then marked done by a stats file."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from . import format as fmt


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
    if ext in fmt.IMAGE_FORMATS:
        return (0, ext)
    return (1, ext) if ext == fmt.M_JSON else (2, ext)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_if_changed(path: str | os.PathLike, data: bytes) -> bool:
    """`atomic_write` unless the file already holds exactly `data` (keeps its mtime for reuse checks)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    atomic_write(path, data)
    return True


def publish_shard(root: str | os.PathLike, name: str, data: bytes, stats: dict) -> dict:
    """Publish shard `name` (e.g. 'mix/mix-000002') under `root`: the tar first, then its stats.

    The stats file is the done-marker: a shard with a tar but no stats is redone on rerun."""
    root = Path(root)
    stats = dict(stats, shard=name, bytes=len(data), sha256=fmt.sha256_bytes(data))
    atomic_write(root / f"{name}{fmt.SHARD_SUFFIX}", data)
    atomic_write(root / f"{name}{fmt.STATS_SUFFIX}", json.dumps(stats, indent=1, sort_keys=True).encode())
    return stats


def read_stats(root: str | os.PathLike, name: str, plan: str | None = None) -> dict | None:
    """The stats of a finished shard, or None when it is not done, its tar went missing, or it
    was made for another plan (`plan` = the plan's fingerprint, when given)."""
    root = Path(root)
    stats_path = root / f"{name}{fmt.STATS_SUFFIX}"
    tar_path = root / f"{name}{fmt.SHARD_SUFFIX}"
    if not stats_path.is_file() or not tar_path.is_file():
        return None
    try:
        stats = json.loads(stats_path.read_text())
    except ValueError:
        return None
    if stats.get("bytes") != tar_path.stat().st_size:
        return None
    if plan is not None and stats.get("plan") != plan:
        return None
    return stats

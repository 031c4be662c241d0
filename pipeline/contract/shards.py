"""Shards: deterministic tar bytes, the one tar reader, publishing a shard and its stats (the done marker)."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable

from .files import atomic_write, read_json
from .ids import sha256_bytes
from .images import IMAGE_FORMATS
from .layout import SHARD_SUFFIX, STATS_SUFFIX
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
    """A shard for reading: a local path (or file:// URL) opened directly, any other URL through fsspec."""
    from .manifest import is_local, local_path

    if is_local(url):
        return open(local_path(url), "rb")
    import fsspec

    return fsspec.open(url, "rb").open()


def iter_shard_samples(url: str) -> Iterable[dict]:
    """The samples of the shard at `url` as webdataset-style dicts: {'__key__', '__url__', member: bytes}."""
    with open_shard(url) as f:
        for key, members in read_shard(f, url):
            yield {"__key__": key, "__url__": url, **members}


def publish_shard(root: str | os.PathLike, name: str, data: bytes, stats: dict) -> dict:
    """Publish shard `name` (e.g. 'mix/mix-000002') under `root`: the tar first, then its stats.

    The stats file is the done-marker: a shard with a tar but no stats is redone on rerun."""
    root = Path(root)
    stats = dict(stats, shard=name, bytes=len(data), sha256=sha256_bytes(data))
    atomic_write(root / f"{name}{SHARD_SUFFIX}", data)
    atomic_write(root / f"{name}{STATS_SUFFIX}", json.dumps(stats, indent=1, sort_keys=True).encode())
    return stats


def read_stats(root: str | os.PathLike, name: str, plan: str | None = None) -> dict | None:
    """The stats of a finished shard, or None when it is not done, its tar went missing, or it
    was made for another plan (`plan` = the plan's fingerprint, when given)."""
    root = Path(root)
    tar_path = root / f"{name}{SHARD_SUFFIX}"
    stats = read_json(root / f"{name}{STATS_SUFFIX}")
    if not isinstance(stats, dict) or not tar_path.is_file():
        return None
    if stats.get("bytes") != tar_path.stat().st_size:
        return None
    if plan is not None and stats.get("plan") != plan:
        return None
    return stats

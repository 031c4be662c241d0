"""Writing files so that readers never see a partial one, and the one "skip if done" marker.

A marker is a small JSON file `{"fingerprint": …, "result": …}` written after a piece of work
completes: the work is done when its marker holds the fingerprint of its current inputs and its
outputs exist. Every stage and the demo reuse finished work through `reuse`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable


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


def write_json(path: str | os.PathLike, value, indent: int = 1) -> None:
    atomic_write(path, json.dumps(value, indent=indent, sort_keys=True).encode())


def read_json(path: str | os.PathLike):
    """The JSON value of a file, or None when it is missing or unreadable (a marker cut short)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def done(marker: str | os.PathLike, fingerprint: str, outputs=()) -> dict | None:
    """The recorded result when `marker` holds `fingerprint` and every output exists, else None."""
    record = read_json(marker)
    if isinstance(record, dict) and record.get("fingerprint") == fingerprint \
            and all(Path(p).exists() for p in outputs):
        return record
    return None


def mark_done(marker: str | os.PathLike, fingerprint: str, result=None) -> None:
    write_json(marker, {"fingerprint": fingerprint, "result": result})


def reuse(marker: str | os.PathLike, fingerprint: str, work: Callable[[], object], outputs=(),
          force: bool = False) -> tuple[object, bool]:
    """(result, reused): the recorded result of finished work with these inputs, else `work()`'s,
    recorded (it must be JSON-able)."""
    if not force and (record := done(marker, fingerprint, outputs)) is not None:
        return record["result"], True
    result = work()
    mark_done(marker, fingerprint, result)
    return result, False

"""Writing files so that readers never see a partial one, and the one "skip if done" marker.

Paths may be local or fsspec URLs (`contract.storage` does the I/O). A marker is a small JSON file
`{"fingerprint": …, "result": …}` written after a piece of work completes: the work is done when
its marker holds the fingerprint of its current inputs and its outputs exist. Every stage and the
demo reuse finished work through `reuse`.
"""
from __future__ import annotations

import json
import os
from typing import Callable

from . import storage


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Readers see the whole file or none of it (local: temp name, fsync, rename; object stores: one PUT)."""
    storage.publish_bytes(path, data)


def plain_modes(root: str | os.PathLike) -> None:
    """Give every file under `root` the mode a plain `open()` gives (0644 under the usual umask).

    Library writers (safetensors' `save_file`, diffusers' `save_pretrained`) create their files
    0600, unreadable by the other users of a shared model or run folder."""
    mode = 0o666 & ~_umask()
    for folder, _, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), mode)


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)   # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def write_if_changed(path: str | os.PathLike, data: bytes) -> bool:
    """`atomic_write` unless the file already holds exactly `data` (keeps its mtime for reuse checks)."""
    if storage.size(path) == len(data):
        try:
            if storage.read_bytes(path) == data:
                return False
        except OSError:
            pass
    atomic_write(path, data)
    return True


def json_bytes(value, indent: int = 1) -> bytes:
    return json.dumps(value, indent=indent, sort_keys=True).encode()


def write_json(path: str | os.PathLike, value, indent: int = 1) -> None:
    atomic_write(path, json_bytes(value, indent))


def parse_json(data: bytes | None):
    """The JSON value of a file's bytes, or None when missing or unreadable (a marker cut short)."""
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def read_json(path: str | os.PathLike):
    """The JSON value of a file, or None when it is missing or unreadable (a marker cut short)."""
    try:
        return parse_json(storage.read_bytes(path))
    except OSError:
        return None


def done(marker: str | os.PathLike, fingerprint: str, outputs=()) -> dict | None:
    """The recorded result when `marker` holds `fingerprint` and every output exists, else None."""
    record = read_json(marker)
    if isinstance(record, dict) and record.get("fingerprint") == fingerprint \
            and all(storage.exists(p) for p in outputs):
        return record
    return None


def mark_done(marker: str | os.PathLike, fingerprint: str, result=None, inputs: dict | None = None) -> None:
    write_json(marker, {"fingerprint": fingerprint, "result": result, **({"inputs": inputs} if inputs else {})})


def reuse(marker: str | os.PathLike, fingerprint: str, work: Callable[[], object], outputs=(),
          force: bool = False, inputs: dict | None = None) -> tuple[object, bool]:
    """(result, reused): the recorded result of finished work with these inputs, else `work()`'s,
    recorded (it must be JSON-able). `inputs`: {name: fingerprint} of each input the fingerprint
    covers, recorded beside it, so that `changed_inputs` can later say which one changed."""
    if not force and (record := done(marker, fingerprint, outputs)) is not None:
        return record["result"], True
    result = work()
    mark_done(marker, fingerprint, result, inputs)
    return result, False


def changed_inputs(marker: str | os.PathLike, inputs: dict) -> list[str] | None:
    """The names of `inputs` ({name: fingerprint}) whose fingerprint differs from the one `marker`
    recorded (a name it did not record counts as changed); None when the marker recorded none."""
    record = read_json(marker)
    recorded = record.get("inputs") if isinstance(record, dict) else None
    if not isinstance(recorded, dict):
        return None
    return [name for name, value in inputs.items() if recorded.get(name) != value]

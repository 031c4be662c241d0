"""Is a weight file readable? A header check, with no tensor loaded (stdlib only: cheap enough to
run while a config is validated, before any model is built).

- `.safetensors`: the 8-byte header length, the JSON header, and a file exactly as long as the
  header says its tensors are (a truncated copy is caught here);
- anything else is read as a torch checkpoint: a zip archive whose central directory is readable
  (torch >= 1.6 `torch.save`), or the legacy format (a pickle protocol 2 stream);
- a folder (a diffusers layout): every `.safetensors` file inside it.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile

SAFETENSORS_SUFFIX = ".safetensors"
_MAX_HEADER = 100 * 1024 * 1024     # safetensors' own limit on the JSON header


def weights_problem(path: str) -> str | None:
    """What makes `path` unreadable as weights ('<path>: …'), or None when its header is sound."""
    if os.path.isdir(path):
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(SAFETENSORS_SUFFIX):
                    problem = weights_problem(os.path.join(folder, name))
                    if problem:
                        return problem
        return None
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if path.endswith(SAFETENSORS_SUFFIX):
                return _safetensors_problem(path, f, size)
            return _torch_problem(path, f, size)
    except OSError as e:
        return f"{path}: cannot read ({e.strerror or e})"


def _safetensors_problem(path: str, f, size: int) -> str | None:
    head = f.read(8)
    if len(head) < 8:
        return f"{path}: not a safetensors file ({size} bytes, no header)"
    (n,) = struct.unpack("<Q", head)
    if n > _MAX_HEADER or 8 + n > size:
        return f"{path}: not a safetensors file (header of {n} bytes in a {size}-byte file)"
    try:
        header = json.loads(f.read(n))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError):
        return f"{path}: not a safetensors file (unreadable header)"
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return f"{path}: truncated or damaged safetensors file ({size} bytes, its header needs {expected})"
    return None


def safetensors_parameters(path: str) -> int | None:
    """The number of parameters a safetensors file (or a folder's safetensors files) holds, read from
    the header alone; None when there is none or a header is unreadable."""
    files = [path] if not os.path.isdir(path) else \
        sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names if n.endswith(SAFETENSORS_SUFFIX))
    total = 0
    try:
        for name in files:
            with open(name, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > _MAX_HEADER:
                    return None
                header = json.loads(f.read(n))
            for key, entry in header.items():
                if key != "__metadata__":
                    count = 1
                    for dim in entry["shape"]:
                        count *= dim
                    total += count
    except (OSError, ValueError, TypeError, KeyError, struct.error):
        return None
    return total if files else None


def _torch_problem(path: str, f, size: int) -> str | None:
    if zipfile.is_zipfile(f):
        try:
            with zipfile.ZipFile(f) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, ValueError) as e:
            return f"{path}: damaged torch checkpoint ({e})"
        return None
    f.seek(0)
    if f.read(2) == b"\x80\x02":       # the legacy torch.save format starts with a protocol-2 pickle
        return None
    return f"{path}: not a readable weight file (not safetensors, not a complete torch checkpoint; {size} bytes)"

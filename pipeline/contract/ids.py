"""Sample ids, per-sample seeds and content hashes."""
from __future__ import annotations

import hashlib
import re

_UID_RE = re.compile(r"^[0-9a-f]{32}$")


def make_uid(*parts: object) -> str:
    """A DataComp-style 128-bit hex id from stable parts (no dots: it is a webdataset key)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode())
    return h.hexdigest()[:32]


def is_uid(value: str) -> bool:
    return bool(_UID_RE.match(value))


def derive_seed(global_seed: int, uid: str, purpose: str = "") -> int:
    """Per-sample seed from (global seed, uid): never from scheduling or worker identity."""
    h = hashlib.sha256(f"{global_seed}\x1f{uid}\x1f{purpose}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_stream(f, chunk: int = 1 << 20) -> str:
    """The sha256 of what is left to read in the binary file object `f`."""
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f, chunk)


def fingerprint(value) -> str:
    """A short stable hash of a JSON-able value: what a piece of work depends on."""
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

"""The teacher's weight file: where it is on this node and what identifies it. Light (no torch): the
release records it without loading a model."""
from __future__ import annotations

from ..config import TeacherConfig
from ..contract import storage
from ..contract.ids import sha256_file


def local_weights(cfg: TeacherConfig) -> str | None:
    """The weight file on this machine: the configured path, or a URL's copy in this node's cache
    (downloaded once, checked against `weights_sha256`)."""
    if cfg.weights is None:
        return None
    return storage.cached_local(cfg.weights, cfg.weights_sha256, "teacher weights")


def weights_sha256(cfg: TeacherConfig) -> str | None:
    """The weights' sha256: a URL's configured digest (its download is checked against it), else the file's."""
    if cfg.weights is None:
        return None
    return cfg.weights_sha256.lower() if storage.is_url(cfg.weights) else sha256_file(cfg.weights)


def weights_identity(cfg: TeacherConfig) -> dict:
    """What the manifest records about the teacher's weights."""
    if cfg.weights is None:
        return {"file": None, "sha256": None}
    return {"file": storage.basename(cfg.weights), "sha256": weights_sha256(cfg)}

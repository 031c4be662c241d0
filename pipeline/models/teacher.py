"""The teacher: a frozen timm backbone (DINOv2 by default) and a probed task head.

DINOv2's linear-evaluation feature is the CLS token concatenated with the mean of the patch tokens;
the head (linear, or a small MLP) is the only trained part (the paper's "probing").
"""
from __future__ import annotations

import json

import torch
from torch import nn

from ..config import TeacherConfig
from ..contract import storage
from ..contract.errors import UserError
from ..contract.ids import sha256_file


def load_backbone(cfg: TeacherConfig) -> nn.Module:
    """The timm backbone with real-weight loading: `pretrained_cfg_overlay=dict(file=...)`."""
    import timm

    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("img_size", cfg.img_size)
    weights = local_weights(cfg)
    model = timm.create_model(
        cfg.arch,
        pretrained=weights is not None,
        pretrained_cfg_overlay=dict(file=weights) if weights else None,
        num_classes=0,
        **kwargs,
    )
    return model.eval().requires_grad_(False)


def backbone_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLS ‖ mean(patch tokens) for ViTs (prefix tokens, e.g. registers, excluded from the mean);
    the pooled feature for any other timm model."""
    tokens = backbone.forward_features(x)
    prefix = getattr(backbone, "num_prefix_tokens", None)
    if tokens.ndim == 3 and prefix:
        return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], dim=1)
    return backbone.forward_head(tokens, pre_logits=True)


def feature_dim(backbone: nn.Module) -> int:
    prefix = getattr(backbone, "num_prefix_tokens", None)
    return backbone.num_features * (2 if prefix else 1)


def make_head(kind: str, in_dim: int, num_classes: int, hidden: int = 1024) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, num_classes)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, num_classes))


def save_head(head: nn.Module, path, meta: dict) -> None:
    from safetensors.torch import save

    from ..contract.files import atomic_write

    atomic_write(path, save({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                            metadata={"tsdistill": json.dumps(meta, sort_keys=True)}))


def load_head(path) -> tuple[nn.Module, dict]:
    """Rebuild a head from its safetensors file, local or a URL (its metadata says which kind and sizes)."""
    from safetensors.torch import load

    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise UserError(f"{path}: teacher head not found (run `tsd probe` first)") from None
    meta = json.loads(safetensors_metadata(data).get("tsdistill", "{}"))
    if not {"head", "in_dim", "num_classes"} <= meta.keys():
        raise UserError(f"{path}: not a tsdistill head (metadata lacks head/in_dim/num_classes)")
    head = make_head(meta["head"], meta["in_dim"], meta["num_classes"], meta.get("hidden", 1024))
    head.load_state_dict(load(data))
    return head.eval().requires_grad_(False), meta


def safetensors_metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors file's bytes (its header: an 8-byte length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    try:
        return json.loads(data[8:8 + length]).get("__metadata__") or {}
    except ValueError:
        return {}


class Teacher(nn.Module):
    """Backbone + head: normalised pixels in, (logits, features) out."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mean, std):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.mean, self.std = tuple(mean), tuple(std)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = backbone_features(self.backbone, x)
        return self.head(feats.float()), feats


def data_config(backbone: nn.Module) -> tuple[tuple, tuple]:
    import timm.data

    cfg = timm.data.resolve_model_data_config(backbone)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def describe_backbone(cfg: TeacherConfig) -> dict:
    """Mean, std and feature size of the configured backbone, built on the meta device: no weights
    are read or allocated (a ViT-g would cost gigabytes just to say how wide it is)."""
    import timm

    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("img_size", cfg.img_size)
    with torch.device("meta"):
        backbone = timm.create_model(cfg.arch, pretrained=False, num_classes=0, **kwargs)
    mean, std = data_config(backbone)
    return {"mean": list(mean), "std": list(std), "feature_dim": feature_dim(backbone)}


def load_teacher(cfg: TeacherConfig, head_path) -> Teacher:
    backbone = load_backbone(cfg)
    head, _ = load_head(head_path)
    mean, std = data_config(backbone)
    return Teacher(backbone, head, mean, std).eval()


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

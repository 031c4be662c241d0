"""The teacher: a timm backbone (DINOv2 by default) and its task adaptation.

DINOv2's linear-evaluation feature is the CLS token concatenated with the mean of the patch tokens.
The adaptation is one file, teacher/head.safetensors: the head (linear, or a small MLP), the only
trained part when probing (the paper's choice), plus, for a finetuned teacher (`probe.mode:
finetune`, the paper's counterpoint), the weights of the last blocks and final norm it trained,
stored under `backbone.` and laid over the pretrained weights when the teacher loads.

For segmentation (the index's task) the head is DINOv2's linear segmentation head
(`contract.dense.make_dense_head`: BatchNorm + 1×1 conv) on the last layer's patch-token grid, of
kind `dense-linear` in the file's metadata; the Teacher then returns dense logits [N, C, h, w].
"""
from __future__ import annotations

import json

import torch
from torch import nn

from ..config import TeacherConfig
from ..contract import storage
from ..contract.dense import make_dense_head, patch_grid, tokens_grid
from ..contract.errors import ConfigError, UserError
from ..contract.tasks import SEGMENTATION
from .teacher_files import local_weights


BACKBONE_PREFIX = "backbone."  # keys of the finetuned backbone weights in the adaptation file
DENSE_LINEAR = "dense-linear"  # the segmentation head's kind: BatchNorm + 1×1 conv on the patch grid
DENSE_HEADS = (DENSE_LINEAR,)


def is_dense(head_kind: str) -> bool:
    """Whether a head kind (head.safetensors' metadata `head`) labels pixels rather than images."""
    return head_kind in DENSE_HEADS


def head_kind(task: str, probe_head: str) -> str:
    """The head the probe fits for a task: `probe.head` for classification; for segmentation the
    dense linear head (`probe.head: linear`, the default, names it; an MLP has no dense form here)."""
    if task != SEGMENTATION:
        return probe_head
    if probe_head != "linear":
        raise UserError(f"probe.head: {probe_head!r} has no segmentation form; use 'linear' (DINOv2's BN + 1x1 "
                        "linear head on the patch tokens)")
    return DENSE_LINEAR


def check_arch(cfg: TeacherConfig) -> None:
    """The architecture is checked here, where the teacher is built, not when the config loads:
    asking timm's registry imports torch, which `tsd plan --dry-run` and `tsd release` never need."""
    import timm

    if not timm.is_model(cfg.arch):
        raise ConfigError(f"teacher.arch: unknown timm model {cfg.arch!r}")


def load_backbone(cfg: TeacherConfig, adaptation=None) -> nn.Module:
    """The timm backbone with its real weights; with `adaptation` (a head file), the backbone
    weights a finetuned teacher trained laid over them."""
    import timm

    check_arch(cfg)
    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("img_size", cfg.img_size)
    weights = local_weights(cfg)
    model = _assigned(cfg.arch, weights, kwargs) if weights else None
    if model is None:  # timm's own loading: random init, then the file copied over it
        model = timm.create_model(
            cfg.arch,
            pretrained=weights is not None,
            pretrained_cfg_overlay=dict(file=weights) if weights else None,
            num_classes=0,
            **kwargs,
        )
    if adaptation is not None:
        _, _, tuned = read_adaptation(adaptation)
        apply_tuned(model, tuned, adaptation)
    return model.eval().requires_grad_(False)


def _assigned(arch: str, weights: str, kwargs: dict) -> nn.Module | None:
    """The backbone built on the meta device with the file's tensors assigned as its parameters:
    one copy of the weights in memory, not timm's two (a random init, then the file copied over it:
    9 GB at peak for ViT-g/14), and no random init to compute. Only for a safetensors file that
    fits the model exactly after timm's own checkpoint filter (e.g. DINOv2's position embeddings
    resampled to `img_size`); None otherwise, and timm's loading does the rest as before."""
    import sys

    import timm
    from safetensors.torch import load_file

    if not str(weights).endswith(".safetensors"):
        return None
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    state = load_file(weights)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        with torch.device("cpu"):   # what the filter creates stays real
            state = filter_fn(state, model)
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != v.shape or state[k].dtype != v.dtype
                                          for k, v in expected.items()):
        return None
    model.load_state_dict(state, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):   # a buffer no file holds
        return None
    return model


# What a full finetune (probe.blocks: all) trains below the first block, one layer-decay step deeper
# than it: timm ViT's token embeddings and the norm before the blocks, where the model has them.
EMBEDDINGS = ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre")


def tuned_parts(backbone: nn.Module, blocks: int | str) -> list[tuple[int, str, nn.Module | nn.Parameter]]:
    """What a finetuned teacher trains besides its head: (depth from the top, name, module or
    parameter) for the last `blocks` transformer blocks (depth 1 = the last), with 'all' every block
    and the embeddings (depth = blocks + 1), and the final norm (depth 0, with the head)."""
    stack = getattr(backbone, "blocks", None)
    if not isinstance(stack, nn.Sequential | nn.ModuleList) or not len(stack):
        raise UserError(f"probe.mode: 'finetune' needs a transformer with blocks; {type(backbone).__name__} "
                        "has none (use probe.mode: probe)")
    n = len(stack)
    if blocks != "all" and blocks > n:
        raise UserError(f"probe.blocks: {blocks}, but the teacher has {n} blocks")
    parts = []
    if blocks == "all":
        for name in EMBEDDINGS:
            part = getattr(backbone, name, None)
            if isinstance(part, nn.Parameter) or isinstance(part, nn.Module) and any(True for _ in part.parameters()):
                parts.append((n + 1, name, part))
        blocks = n
    parts += [(d, f"blocks.{n - d}", stack[n - d]) for d in range(blocks, 0, -1)]
    norm = getattr(backbone, "norm", None)
    if isinstance(norm, nn.Module) and any(True for _ in norm.parameters()):
        parts.append((0, "norm", norm))
    return parts


def apply_tuned(backbone: nn.Module, tuned: dict, where) -> None:
    """Lay a finetuned teacher's backbone weights over the pretrained ones (every key must exist)."""
    if not tuned:
        return
    own = backbone.state_dict()
    unknown = sorted(k for k in tuned if k not in own or own[k].shape != tuned[k].shape)
    if unknown:
        raise UserError(f"{where}: finetuned weight {unknown[0]!r} does not fit the teacher backbone "
                        "(another teacher.arch or model_kwargs?)")
    backbone.load_state_dict(tuned, strict=False)


def backbone_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLS ‖ mean(patch tokens) for ViTs (prefix tokens, e.g. registers, excluded from the mean);
    the pooled feature for any other timm model."""
    return token_features(backbone, backbone.forward_features(x))


def token_features(backbone: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`backbone_features` from the tokens `forward_features` gave."""
    prefix = getattr(backbone, "num_prefix_tokens", None)
    if tokens.ndim == 3 and prefix:
        return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], dim=1)
    return backbone.forward_head(tokens, pre_logits=True)


def head_inputs(backbone: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """What a head of `kind` reads from normalised pixels: the patch grid [N, D, h, w] for a dense
    head, CLS ‖ mean-patch [N, D'] otherwise."""
    return patch_grid(backbone, x) if is_dense(kind) else backbone_features(backbone, x)


def head_in_dim(backbone: nn.Module, kind: str) -> int:
    """The width of `head_inputs` for a head of `kind`: the token width, or the pooled feature's."""
    return backbone.num_features if is_dense(kind) else feature_dim(backbone)


def feature_dim(backbone: nn.Module) -> int:
    prefix = getattr(backbone, "num_prefix_tokens", None)
    return backbone.num_features * (2 if prefix else 1)


def make_head(kind: str, in_dim: int, num_classes: int, hidden: int = 1024) -> nn.Module:
    """The head of a kind: `linear`/`mlp` on pooled features [N, in_dim], `dense-linear` on a patch
    grid [N, in_dim, h, w] (in_dim: the backbone's token width)."""
    if is_dense(kind):
        return make_dense_head(in_dim, num_classes)
    if kind == "linear":
        return nn.Linear(in_dim, num_classes)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, num_classes))


def save_head(head: nn.Module, path, meta: dict, tuned: dict | None = None) -> None:
    """The adaptation file: the head's weights, and a finetuned teacher's backbone weights (`tuned`,
    by their backbone state-dict names) under `backbone.`."""
    from safetensors.torch import save

    from ..contract.files import atomic_write

    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    tensors.update({BACKBONE_PREFIX + k: v.detach().cpu().contiguous() for k, v in (tuned or {}).items()})
    atomic_write(path, save(tensors, metadata={"tsdistill": json.dumps(meta, sort_keys=True)}))


def read_adaptation(path) -> tuple[nn.Module, dict, dict]:
    """(head, metadata, finetuned backbone weights — empty for a probed teacher) from a head file,
    local or a URL (its metadata says which kind and sizes)."""
    from safetensors.torch import load

    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise UserError(f"{path}: teacher head not found (run `tsd probe` first)") from None
    meta = json.loads(safetensors_metadata(data).get("tsdistill", "{}"))
    if not {"head", "in_dim", "num_classes"} <= meta.keys():
        raise UserError(f"{path}: not a tsdistill head (metadata lacks head/in_dim/num_classes)")
    tensors = load(data)
    tuned = {k[len(BACKBONE_PREFIX):]: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
    head = make_head(meta["head"], meta["in_dim"], meta["num_classes"], meta.get("hidden", 1024))
    head.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(BACKBONE_PREFIX)})
    return head.eval().requires_grad_(False), meta, tuned


def safetensors_metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors file's bytes (its header: an 8-byte length, then JSON)."""
    length = int.from_bytes(data[:8], "little")
    try:
        return json.loads(data[8:8 + length]).get("__metadata__") or {}
    except ValueError:
        return {}


class Teacher(nn.Module):
    """Backbone + head: normalised pixels in, (logits, features) out.

    Classification: logits [N, C]. A dense head (`dense`): logits [N, C, h, w] at the patch grid
    (fp32, not upsampled). Features are CLS ‖ mean-patch [N, D'] for both, from the same backbone pass."""

    def __init__(self, backbone: nn.Module, head: nn.Module, mean, std, dense: bool = False):
        super().__init__()
        self.backbone, self.head, self.dense = backbone, head, dense
        self.mean, self.std = tuple(mean), tuple(std)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.dense:
            feats = backbone_features(self.backbone, x)
            return self.head(feats.float()), feats
        tokens = self.backbone.forward_features(x)
        grid = tokens_grid(self.backbone, tokens, x.shape[-2], x.shape[-1]).float()
        # the head one view at a time: the 1×1 conv's CPU kernel changes with the batch size (by 1e-6,
        # enough to flip float16 roundings), and a sample's logits must not depend on the samples
        # sharing its batch (`tsd regenerate` rebuilds one alone); the head costs little beside the backbone
        logits = torch.cat([self.head(view) for view in grid.split(1)]) if len(grid) else self.head(grid)
        return logits, token_features(self.backbone, tokens)


def data_config(backbone: nn.Module) -> tuple[tuple, tuple]:
    import timm.data

    cfg = timm.data.resolve_model_data_config(backbone)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def describe_backbone(cfg: TeacherConfig) -> dict:
    """Mean, std and feature size of the configured backbone, built on the meta device: no weights
    are read or allocated (a ViT-g would cost gigabytes just to say how wide it is)."""
    backbone = meta_backbone(cfg)
    mean, std = data_config(backbone)
    return {"mean": list(mean), "std": list(std), "feature_dim": feature_dim(backbone)}


def meta_backbone(cfg: TeacherConfig) -> nn.Module:
    """The configured backbone built on the meta device: its shapes, no weights."""
    import timm

    check_arch(cfg)
    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("img_size", cfg.img_size)
    with torch.device("meta"):
        return timm.create_model(cfg.arch, pretrained=False, num_classes=0, **kwargs)


def teacher_grid(cfg: TeacherConfig) -> list[int]:
    """The patch grid [h, w] of the teacher's dense logits at its input size (no weights read)."""
    from ..contract.dense import grid_size

    return list(grid_size(meta_backbone(cfg), cfg.img_size, cfg.img_size))


def load_teacher(cfg: TeacherConfig, head_path) -> Teacher:
    """Backbone (with a finetuned teacher's trained blocks laid over it) and head, from the head file."""
    head, meta, tuned = read_adaptation(head_path)
    backbone = load_backbone(cfg)
    apply_tuned(backbone, tuned, head_path)
    mean, std = data_config(backbone)
    return Teacher(backbone, head, mean, std, dense=is_dense(meta["head"])).eval()

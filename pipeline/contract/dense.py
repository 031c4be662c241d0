"""Dense prediction, defined once for the teacher and the students: patch tokens as a feature map,
the linear segmentation head on them, and logits brought to a mask's resolution.

The head follows DINOv2's linear segmentation evaluation: BatchNorm then a 1×1 convolution on the
last layer's patch tokens, logits at the patch grid, upsampled bilinearly. The probe fits it on a
frozen teacher; the ViT student (DINOv2 ViT-S/14) carries the same head, so it has the teacher's shape.
"""
from __future__ import annotations


def patch_grid(backbone, x):
    """A timm ViT's last-layer patch tokens as a feature map [N, D, h, w] (prefix tokens, i.e. CLS
    and registers, dropped); h, w = the input size over the patch size."""
    return tokens_grid(backbone, backbone.forward_features(x), x.shape[-2], x.shape[-1])


def tokens_grid(backbone, tokens, height: int, width: int):
    """`patch_grid` from the tokens `forward_features` already gave for an input of height×width
    (a caller that also needs the CLS token runs the backbone once)."""
    if tokens.ndim == 4:               # a CNN's feature map is one already (timm: [N, C, h, w])
        return tokens
    prefix = getattr(backbone, "num_prefix_tokens", 0) or 0
    patches = tokens[:, prefix:]
    h, w = grid_size(backbone, height, width)
    if patches.shape[1] != h * w:
        raise ValueError(f"{type(backbone).__name__}: {patches.shape[1]} patch tokens for a {h}x{w} grid")
    return patches.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def grid_size(backbone, height: int, width: int) -> tuple[int, int]:
    """The patch grid of a timm ViT at an input size (patch 14 at 224 px: 16×16)."""
    patch = backbone.patch_embed.patch_size
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    return height // ph, width // pw


def make_dense_head(in_dim: int, num_classes: int):
    """BatchNorm2d + 1×1 conv: DINOv2's linear segmentation head."""
    from torch import nn

    return nn.Sequential(nn.BatchNorm2d(in_dim), nn.Conv2d(in_dim, num_classes, kernel_size=1))


def upsample_logits(logits, size: tuple[int, int]):
    """Dense logits [N, C, h, w] → [N, C, H, W], bilinear (align_corners=False): how patch-grid
    logits meet a mask, for the teacher's metrics, the students' losses and every prediction."""
    import torch.nn.functional as F

    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

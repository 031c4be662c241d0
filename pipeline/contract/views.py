"""Recorded views: how they are drawn, and how a view becomes pixels.

A view is `[x, y, w, h, flip]`, normalised to the stored image. Train samples record K random
resized crops (+ flip); a validation sample records one centred square. `view_pixels` is the one
definition of view → pixels, used by the worker before the teacher and by the trainer before the
student: two copies would drift, and the student would no longer see what the teacher saw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Views:
    """How views are drawn (RandomResizedCrop-style boxes plus a horizontal flip), and how many."""
    k: int = 10                               # recorded views per train sample (real and mix)
    scale: tuple[float, float] = (0.25, 1.0)  # area fraction of a crop
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of a crop
    flip: bool = True
    eval_crop: float = 0.875                  # val: centred square of this fraction of the short side

    def check(self):
        if self.k < 1:
            raise ConfigError(f"k: must be at least 1, got {self.k}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(f"scale: expected 0 < min <= max <= 1, got {list(self.scale)}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"ratio: expected 0 < min <= max, got {list(self.ratio)}")
        if not 0 < self.eval_crop <= 1:
            raise ConfigError(f"eval_crop: expected in (0, 1], got {self.eval_crop}")


def sample_views(seed: int, width: int, height: int, k: int, views: Views) -> list:
    """k train views [x, y, w, h, flip] for a stored image of width×height (deterministic in seed)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    area = width * height
    log_ratio = (math.log(views.ratio[0]), math.log(views.ratio[1]))
    out = []
    for _ in range(k):
        box = None
        for _attempt in range(10):
            target = area * rng.uniform(views.scale[0], views.scale[1])
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                x = int(rng.integers(0, width - w + 1))
                y = int(rng.integers(0, height - h + 1))
                box = (x, y, w, h)
                break
        if box is None:  # torchvision's fallback: the largest centred box within the ratio range
            box = _center_box(width, height, 1.0)
        flip = int(views.flip and rng.random() < 0.5)
        out.append(_normalise(box, width, height, flip))
    return out


def center_view(width: int, height: int, views: Views) -> list:
    """The single evaluation view: a centred square, `eval_crop` of the short side."""
    return [_normalise(_center_box(width, height, views.eval_crop), width, height, 0)]


def _center_box(width: int, height: int, fraction: float) -> tuple:
    side = max(1, int(round(min(width, height) * fraction)))
    return ((width - side) // 2, (height - side) // 2, side, side)


def _normalise(box: tuple, width: int, height: int, flip: int) -> list:
    x, y, w, h = box
    return [round(x / width, 6), round(y / height, 6), round(w / width, 6), round(h / height, 6), flip]


def view_box(view: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of a normalised view; never empty, always inside the image."""
    x, y, w, h = view[:4]
    x0 = min(max(int(round(x * width)), 0), width - 1)
    y0 = min(max(int(round(y * height)), 0), height - 1)
    x1 = min(max(int(round((x + w) * width)), x0 + 1), width)
    y1 = min(max(int(round((y + h) * height)), y0 + 1), height)
    return x0, y0, x1, y1


def view_pixels(image, view: Sequence[float], size: int):
    """One view of a uint8 CHW tensor → float CHW tensor in [0, 1] of size×size.

    The one definition of crop → resize (bilinear, antialiased) → flip, used by the worker before
    the teacher and by the trainer before the student. Works on any device."""
    import torch
    import torch.nn.functional as F

    _, height, width = image.shape
    x0, y0, x1, y1 = view_box(view, width, height)
    crop = image[:, y0:y1, x0:x1].unsqueeze(0).float()
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = out.squeeze(0).clamp_(0, 255).div_(255.0)
    if view[4]:
        out = torch.flip(out, dims=[2])
    return out


def views_batch(image, views: Sequence[Sequence[float]], size: int):
    """All recorded views of one image: float [K, 3, size, size] in [0, 1]."""
    import torch

    return torch.stack([view_pixels(image, v, size) for v in views])


def normalize(batch, mean: Sequence[float], std: Sequence[float]):
    """Per-model colour normalisation of a [N, 3, H, W] float batch in [0, 1]."""
    import torch

    m = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(1, -1, 1, 1)
    return (batch - m) / s

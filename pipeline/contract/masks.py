"""Stored masks: a segmentation sample's class ids as an 8-bit grey PNG at its image's stored size.

PNG is lossless (a JPEG would invent classes at every edge), and its encoder settings are fixed, so
a rerun is byte-identical. Resizing is nearest neighbour (PIL's NEAREST samples pixel centres),
the only resampling that never blends two class ids into a third.
"""
from __future__ import annotations

import io

import numpy as np

from .images import stored_size
from .tasks import IGNORE_INDEX


def store_mask(mask: np.ndarray, short_side: int) -> bytes:
    """uint8 [H, W] class ids → the PNG bytes a shard stores: resized (nearest) to the size
    `store_image` gives its image (`stored_size`), then encoded."""
    from PIL import Image

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if mask.ndim != 2:
        raise ValueError(f"a mask is [H, W] class ids, got shape {mask.shape}")
    image = Image.fromarray(mask, mode="L")
    size = stored_size(image.width, image.height, short_side)
    if size != image.size:
        image = image.resize(size, Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_mask(data: bytes, where: str = ""):
    """Stored mask bytes → uint8 [H, W] tensor of class ids (IGNORE_INDEX where unlabelled)."""
    import torch
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("L", "P"):
                raise ValueError(f"mode {im.mode}, expected 8-bit grey")
            array = np.asarray(im, dtype=np.uint8).copy()
    except (OSError, ValueError) as e:
        raise ValueError(f"{where}: bad mask member: {e}") from None
    return torch.from_numpy(array)


def class_pixels(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per class [num_classes] of a mask (IGNORE_INDEX not counted)."""
    values = np.asarray(mask).reshape(-1)
    values = values[values != IGNORE_INDEX]
    return np.bincount(values, minlength=num_classes)[:num_classes]

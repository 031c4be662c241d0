"""Thumbnails: a stored image, decoded by the contract's decoder, made small and written as JPEG;
and label maps (segmentation), coloured per class, written as PNG layers the page lays over them."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ...contract.files import atomic_write
from ...contract.images import decode_image, tensor_to_pil
from ...contract.tasks import IGNORE_INDEX

THUMB_SIDE = 160    # cards and tables
PAGE_SIDE = 384     # a sample's page, where the views are drawn over the image


def thumbnail(data: bytes, side: int, quality: int = 85) -> bytes:
    """JPEG bytes of the image fitted into side x side (aspect kept)."""
    image = tensor_to_pil(decode_image(data))
    image.thumbnail((side, side))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_thumbs(out: Path, uid: str, data: bytes) -> dict:
    """out/img/<uid>.jpg (small) and out/img/<uid>-page.jpg (larger); their paths relative to `out`."""
    small, large = f"img/{uid}.jpg", f"img/{uid}-page.jpg"
    atomic_write(out / small, thumbnail(data, THUMB_SIDE))
    atomic_write(out / large, thumbnail(data, PAGE_SIDE))
    return {"thumb": small, "image": large}


def fitted_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) `thumbnail` gives an image of that size: the label layers match it pixel for pixel."""
    from PIL import Image

    probe = Image.new("1", (width, height))   # 1 bit a pixel: PIL's own rounding, without the pixels
    probe.thumbnail((side, side))
    return probe.size


def resized_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W] class ids at (width, height), nearest neighbour (as stored masks are resized)."""
    from PIL import Image

    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    if (labels.shape[1], labels.shape[0]) == tuple(size):
        return labels
    return np.asarray(Image.fromarray(labels, mode="L").resize(size, Image.NEAREST))


def label_png(labels: np.ndarray, colours: np.ndarray) -> bytes:
    """RGBA PNG of a class map: each class in its colour, opaque; IGNORE_INDEX (unlabelled, or
    outside a view) transparent, so the image shows through."""
    from PIL import Image

    labels = np.asarray(labels, dtype=np.uint8)
    alpha = np.where(labels == IGNORE_INDEX, 0, 255).astype(np.uint8)
    rgba = np.concatenate([colours[labels], alpha[..., None]], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_label_thumbs(out: Path, uid: str, layers: dict[str, np.ndarray], colours: np.ndarray) -> dict:
    """out/img/<uid>-<name>.png per label map; {name: path relative to `out`}."""
    paths = {}
    for name, labels in layers.items():
        paths[name] = f"img/{uid}-{name}.png"
        atomic_write(out / paths[name], label_png(labels, colours))
    return paths

"""Stored images: the size an image is stored at, the fixed encoder settings, the decoder."""
from __future__ import annotations

import io

import numpy as np

IMAGE_FORMATS = ("jpg", "webp", "png")


def stored_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size an image is stored at: short side scaled down to `short_side` (never up)."""
    s = min(width, height)
    if s <= short_side:
        return width, height
    scale = short_side / s
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def encode_image(pil_image, fmt: str, quality: int) -> bytes:
    """RGB PIL image → stored bytes. Fixed encoder settings so a CPU rerun is byte-identical."""
    buf = io.BytesIO()
    if fmt == "jpg":
        pil_image.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2,
                       optimize=False, progressive=False)
    elif fmt == "webp":
        pil_image.save(buf, format="WEBP", quality=quality, method=4)
    elif fmt == "png":
        pil_image.save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"unknown image format {fmt!r} (expected one of {IMAGE_FORMATS})")
    return buf.getvalue()


def store_image(image, short_side: int, fmt: str, quality: int) -> bytes:
    """RGB PIL image → the bytes a shard stores: short side down to `short_side` (bicubic), then
    encoded. One rule for real images (probe and worker) and generated ones."""
    from PIL import Image

    size = stored_size(image.width, image.height, short_side)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC, reducing_gap=None)
    return encode_image(image, fmt, quality)


def tensor_to_pil(image_u8_chw):
    from PIL import Image

    return Image.fromarray(image_u8_chw.permute(1, 2, 0).cpu().numpy())


def pil_to_tensor(image):
    """RGB PIL image → uint8 CHW tensor."""
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def decode_image(data: bytes):
    """Stored bytes → uint8 CHW tensor (RGB). The decoder both sides use on the CPU."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return pil_to_tensor(im.convert("RGB"))

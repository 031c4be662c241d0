"""Thumbnails: a stored image, decoded by the contract's decoder, made small and written as JPEG."""
from __future__ import annotations

import io
from pathlib import Path

from ...contract.files import atomic_write
from ...contract.images import decode_image, tensor_to_pil

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

"""How a source image becomes the bytes stored in a shard (one rule for the probe and the worker)."""
from __future__ import annotations

from PIL import Image

from .config import DataConfig
from .format import encode_image, stored_size


def store_bytes(image: Image.Image, data: DataConfig) -> bytes:
    """RGB image → stored bytes: short side down to `data.store_size` (bicubic), then encoded."""
    size = stored_size(image.width, image.height, data.store_size)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC, reducing_gap=None)
    return encode_image(image, data.image_format, data.quality)


def store_tensor(image_u8_chw, data: DataConfig) -> bytes:
    """A generated uint8 CHW tensor → stored bytes (same rule as real images)."""
    return store_bytes(Image.fromarray(image_u8_chw.permute(1, 2, 0).cpu().numpy()), data)

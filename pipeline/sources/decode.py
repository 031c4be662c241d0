"""One source file → 8-bit RGB pixels: `open_rgb`, the only function that decodes a source image.

Ingest calls it on every file (rejecting what it cannot use, with a reason); the probe and the
generation worker call it again on the kept files with the limits ingest used (recorded in the
index), so it is deterministic.

Decoding rules (`open_rgb`), checked in this order
--------------------------------------------------
| input                                   | outcome                                                  |
| --------------------------------------- | -------------------------------------------------------- |
| zero-byte file                          | reject "empty file"                                      |
| format PIL cannot identify              | reject "not an image (...)"                              |
| EPS (PIL would run Ghostscript on it)   | reject "unsupported format EPS (...)"                    |
| header over `max_pixels` (W*H)          | reject "too large (W×H pixels ...)", before any decoding |
| header over PIL's hard limit            | reject "too large (N pixels ...)" (see below)             |
| a side under `min_size`                 | reject "too small (W×H pixels ...)"                      |
| decoder error (truncated, corrupt data) | reject "truncated or corrupt (...)"                      |
| animated GIF/WebP/PNG, multi-page TIFF  | first frame, kept                                        |
| EXIF orientation tag                    | applied (width/height are the displayed ones)            |
| RGB                                     | kept                                                     |
| 1, L                                    | replicated to RGB (1 → 0/255)                            |
| I;16 (16-bit grey)                      | value / 257, rounded, then replicated to RGB             |
| I (32-bit int grey)                     | clipped to 0..65535 (the 16-bit range it nearly always   |
|                                         | holds), then as I;16                                     |
| F (float grey)                          | taken as 0..1 (NaN → 0), clipped, × 255, rounded, to RGB |
| any transparency (RGBA, LA, PA, RGBa,   | alpha-composited over white, then RGB                    |
| P or L with a transparency key)         |                                                          |
| P without transparency                  | palette → RGB                                            |
| CMYK                                    | PIL's CMYK → RGB (embedded ICC profiles are ignored)     |
| YCbCr, LAB, HSV, other modes            | PIL's conversion to RGB; a mode PIL cannot convert is    |
|                                         | rejected "unsupported pixel mode ..."                    |

Why white under transparency: product photos and cut-outs, the usual transparent inputs, are shot
and shown on white; black would turn a transparent background into a dark frame the teacher has
never seen. Why ignore ICC profiles: colour-managed conversion needs littlecms profiles per file
and differs across builds; PIL's plain conversion is deterministic, and the same function produces
the pixels for the teacher and for the student, so both see the same colours.
16-bit RGB(A) files are reduced to 8 bits by PIL's decoders themselves.

PIL refuses images over twice `PIL.Image.MAX_IMAGE_PIXELS` before their header reaches us (its own
decompression-bomb guard), so a `max_pixels` above that limit has no effect unless the caller also
raises `PIL.Image.MAX_IMAGE_PIXELS`. Between PIL's limit and twice it, PIL warns once per process.
"""
from __future__ import annotations

import io
import os
import re
import stat

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..contract import storage
from ..contract.errors import UserError, short_error

DEFAULT_MAX_PIXELS = 89_478_485   # PIL's default Image.MAX_IMAGE_PIXELS
DEFAULT_MIN_SIZE = 16

# Formats whose PIL decoder runs an external program (Ghostscript) on the file: never on our inputs.
EXTERNAL_DECODER_FORMATS = frozenset({"EPS"})
HIGH_DEPTH_GREY = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


class ImageRejected(Exception):
    """A source file that cannot become a training image; `reason` is short and human."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def open_rgb(path, *, min_size: int = DEFAULT_MIN_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read, check and fully decode an image file into 8-bit RGB by the rules in the module doc."""
    return decode_rgb(read_file(path), min_size=min_size, max_pixels=max_pixels)[0]


def decode_rgb(data: bytes, *, min_size: int = DEFAULT_MIN_SIZE,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, str]:
    """`open_rgb` on bytes already read; returns (RGB image, the source's PIL mode)."""
    if not data:
        raise ImageRejected("empty file")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageRejected(_bomb_reason(e)) from None
    except Exception as e:  # noqa: BLE001 - PIL's header parsers raise many types on bad data
        raise ImageRejected(f"truncated or corrupt ({short_error(e)})") from None
    with im:
        if im.format in EXTERNAL_DECODER_FORMATS:
            raise ImageRejected(f"unsupported format {im.format} (its decoder runs an external program)")
        width, height = im.size
        if width * height > max_pixels:
            raise ImageRejected(f"too large ({width}×{height} pixels, limit {max_pixels})")
        if min(width, height) < min_size:
            raise ImageRejected(f"too small ({width}×{height} pixels, minimum side {min_size})")
        source_mode = im.mode
        try:
            im.load()   # decode everything now: truncation must fail here, not in a worker later
            ImageOps.exif_transpose(im, in_place=True)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError...
            raise ImageRejected(f"truncated or corrupt ({short_error(e)})") from None
        return _to_rgb(im), source_mode


def read_file(path) -> bytes:
    """The file's bytes (a local path or a URL), with the usual filesystem failures turned into rejections."""
    try:
        if storage.is_url(path):
            return storage.read_bytes(path)
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRejected("not a regular file")
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageRejected("file not found") from None
    except IsADirectoryError:
        raise ImageRejected("not a regular file") from None
    except PermissionError:
        raise ImageRejected("unreadable (permission denied)") from None
    except OSError as e:
        raise ImageRejected(f"unreadable ({e.strerror or e})") from None
    except UserError as e:  # a URL whose storage cannot be reached from here (credentials, endpoint)
        raise ImageRejected(f"unreadable ({e})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in HIGH_DEPTH_GREY:   # before the transparency test: PIL's own conversion clips at 255
        return Image.fromarray(_grey_to_uint8(im)).convert("RGB")
    if im.has_transparency_data:
        return _over_white(im)
    if im.mode == "RGB":
        return im.copy()   # detached from the source file object
    try:
        return im.convert("RGB")
    except ValueError:
        raise ImageRejected(f"unsupported pixel mode {im.mode}") from None


def _grey_to_uint8(im: Image.Image) -> np.ndarray:
    values = np.asarray(im)
    if im.mode == "F":
        unit = np.clip(np.nan_to_num(values.astype(np.float64), nan=0.0), 0.0, 1.0)
        return np.floor(unit * 255.0 + 0.5).astype(np.uint8)
    sixteen = np.clip(values.astype(np.int64), 0, 65535)
    return ((sixteen + 128) // 257).astype(np.uint8)   # round(v / 257): 65535 → 255, exactly


def _over_white(im: Image.Image) -> Image.Image:
    try:
        rgba = im.convert("RGBA")
    except ValueError:   # e.g. 'La' has no direct route to RGBA
        raise ImageRejected(f"unsupported pixel mode {im.mode}") from None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _bomb_reason(error: Exception) -> str:
    match = re.search(r"\((\d+) pixels\)", str(error))
    pixels = f"{match.group(1)} pixels" if match else "over PIL's limit"
    return f"too large ({pixels}; refused by PIL's decompression-bomb guard)"



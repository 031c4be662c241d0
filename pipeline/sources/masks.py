"""Source masks: the one reader of an indexed mask (`read_source_mask`), the checks ingest makes on
every mask (`inspect_mask`), and the class-id remappings of the datasets whose masks are not already
class ids (`LabelMap`).

A segmentation index's `mask_path` always names an 8-bit PNG (grey, or palette: its indices are the
class ids) holding class ids 0..C-1 and IGNORE_INDEX, at its image's size, so every later stage reads
every mask the same way. A dataset whose files hold other values (ADE20K's 0 = "other" and 1..150,
Cityscapes' labelIds, a user's own ignore value) gets a remapped copy written by ingest beside the
index, content-addressed (`OUT/masks/<sha256[:2]>/<sha256>.png`), and the index points there; a mask
already in class ids is indexed where it is.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ..contract.files import atomic_write
from ..contract.ids import sha256_bytes
from ..contract.tasks import IGNORE_INDEX
from .decode import ImageRejected, read_file

MASKS = "masks"          # OUT/masks/: remapped (or extracted) masks, content-addressed
MASK_MODES = ("L", "P")  # 8-bit single channel; a palette PNG's indices are its class ids


@dataclass(frozen=True)
class LabelMap:
    """A source value → class id table (uint8[256] as bytes: picklable, cheap to send to a worker);
    `name` says which convention it is (ade20k, cityscapes, ignore=V)."""
    name: str
    table: bytes

    def apply(self, values: np.ndarray) -> np.ndarray:
        return np.frombuffer(self.table, np.uint8)[values]


def label_map(name: str, pairs: dict[int, int], default: int | None = None) -> LabelMap:
    """A table that maps each key of `pairs` to its value, every other value to `default` (or to
    itself when `default` is None)."""
    table = np.arange(256, dtype=np.uint8) if default is None else np.full(256, default, np.uint8)
    for source, target in pairs.items():
        table[source] = target
    return LabelMap(name, table.tobytes())


# ADE20K (SceneParsing ADEChallengeData2016): 0 is "other" (no label), 1..150 are classes 0..149.
ADE20K = LabelMap("ade20k", np.array([IGNORE_INDEX] + [(v - 1) % 256 for v in range(1, 256)], np.uint8).tobytes())
# Cityscapes gtFine labelIds → the 19 train ids of its benchmark (cityscapesScripts' labels.py); every
# other id (unlabeled, ego vehicle, ground, parking, rail track, guard rail, ...) is ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES = label_map("cityscapes", CITYSCAPES_TRAIN_IDS, default=IGNORE_INDEX)


def ignore_map(value: int) -> LabelMap | None:
    """A user's own ignore value → IGNORE_INDEX (None when it already is IGNORE_INDEX)."""
    if not 0 <= value <= 255:
        raise ValueError(f"an ignore value is 0..255, got {value}")
    return None if value == IGNORE_INDEX else label_map(f"ignore={value}", {value: IGNORE_INDEX})


def shipped_classes(name: str) -> list[str]:
    """A class list shipped with the package (pipeline/sources/classlists/<name>.txt)."""
    text = resources.files(__package__).joinpath("classlists", f"{name}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_source_mask(path) -> np.ndarray:
    """An indexed mask (`mask_path` of a segmentation index row) → uint8 [H, W] class ids, with
    IGNORE_INDEX where unlabelled. The one way every stage after ingest reads a source mask."""
    with Image.open(io.BytesIO(read_file(path))) as im:
        if im.mode not in MASK_MODES:
            raise ValueError(f"{path}: mask mode {im.mode}, expected 8-bit single channel (L or P)")
        return np.asarray(im, dtype=np.uint8).copy()


def _mask_values(data: bytes) -> np.ndarray:
    """Decoded mask bytes, or ImageRejected naming why they are not a usable mask."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":   # a lossy format invents classes at every edge
                raise ImageRejected(f"mask not a PNG ({im.format})")
            if im.mode not in MASK_MODES:
                raise ImageRejected(f"mask not 8-bit single channel (mode {im.mode})")
            im.load()
            return np.asarray(im, dtype=np.uint8).copy()
    except ImageRejected:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise ImageRejected(f"mask unreadable ({type(e).__name__}: {str(e)[:80]})") from None


def encode_mask_png(mask: np.ndarray) -> bytes:
    """uint8 [H, W] class ids → grey PNG bytes with fixed encoder settings (a rerun is byte-identical)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, np.uint8), mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_mask_file(out: Path, data: bytes) -> str:
    """Mask PNG bytes written once under OUT/masks/, named by their sha256; returns the path."""
    sha = sha256_bytes(data)
    path = Path(out) / MASKS / sha[:2] / f"{sha}.png"
    if not path.is_file():
        atomic_write(path, data)
    return str(path)


def inspect_mask(mask_path: str | None, width: int, height: int, num_classes: int,
                 mapping: LabelMap | None, out: str | None) -> tuple:
    """('ok', mask_path, mask_sha256) or ('reject', reason) for the mask of an image of that
    (displayed) size: missing, unreadable, not 8-bit single channel, another size, or values
    outside 0..num_classes-1 other than IGNORE_INDEX (after `mapping`) are rejections. A mapped mask is
    written under OUT/masks/ and indexed there."""
    if mask_path is None:
        return ("reject", "mask missing")
    try:
        data = read_file(mask_path)
        if not data:
            raise ImageRejected("mask unreadable (empty file)")
        values = _mask_values(data)
    except ImageRejected as e:
        reason = e.reason if e.reason.startswith("mask") else \
            ("mask missing" if e.reason == "file not found" else f"mask unreadable ({e.reason})")
        return ("reject", f"{reason} ({mask_path})" if reason == "mask missing" else reason)
    if values.shape != (height, width):
        return ("reject", f"mask size differs from its image ({values.shape[1]}×{values.shape[0]} against "
                          f"{width}×{height})")
    if mapping is not None:
        values = mapping.apply(values)
    bad = np.unique(values[(values >= num_classes) & (values != IGNORE_INDEX)])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:6]) + (", …" if bad.size > 6 else "")
        after = f" after the {mapping.name} mapping" if mapping is not None else ""
        return ("reject", f"mask values outside 0..{num_classes - 1} ({shown}{after}; ignore value {IGNORE_INDEX})")
    if mapping is None:
        return ("ok", str(mask_path), sha256_bytes(data))
    data = encode_mask_png(values)
    return ("ok", write_mask_file(Path(out), data), sha256_bytes(data))

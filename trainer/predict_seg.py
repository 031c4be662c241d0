"""`tsd predict` for a segmentation student: a class map per image, as 8-bit PNGs of class ids.

The whole image (EXIF orientation applied) is resized to the student's input size by
`contract.views.view_pixels` (the full view: a segmentation map covers every pixel, so nothing is
cropped; the aspect ratio is not kept, as the training views' random ratios were not), normalised with
the student's mean and std; the logits are upsampled bilinearly to the image's own size
(`contract.dense.upsample_logits`) and their argmax written to OUT/<image stem>.png, with
OUT/predictions.csv listing each image, its mask file and the share of its pixels per class.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from pipeline.contract.dense import upsample_logits
from pipeline.contract.errors import UserError, first_line
from pipeline.contract.files import atomic_write
from pipeline.contract.images import pil_to_tensor
from pipeline.contract.views import normalize, view_pixels

FULL_VIEW = (0.0, 0.0, 1.0, 1.0, 0)
PREDICTIONS_CSV = "predictions.csv"


def read_image(path: Path) -> torch.Tensor:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            return pil_to_tensor(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read as an image ({first_line(e)})") from None


@torch.no_grad()
def predict_masks(model, info: dict, files: list[Path], out: Path) -> list[dict]:
    """Write OUT/<stem>.png per image (names made unique when two images share a stem) and
    OUT/predictions.csv; return the CSV's rows."""
    from PIL import Image

    size, classes = int(info["img_size"]), list(info["classes"])
    out.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    for f in files:
        image = read_image(f)
        x = normalize(view_pixels(image, FULL_VIEW, size)[None], info["mean"], info["std"])
        logits = upsample_logits(model(x).float(), tuple(image.shape[-2:]))
        labels = logits.argmax(1)[0].to(torch.uint8).numpy()
        name = f.stem + ".png"
        n = 1
        while name in used:   # two images named alike in different folders
            n += 1
            name = f"{f.stem}-{n}.png"
        used.add(name)
        buffer = io.BytesIO()
        Image.fromarray(labels, mode="L").save(buffer, format="PNG")
        atomic_write(out / name, buffer.getvalue())
        share = np.bincount(labels.reshape(-1), minlength=len(classes))[:len(classes)] / labels.size
        rows.append({"image": str(f), "mask": name, "share": share.tolist()})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "mask", *classes])
    for r in rows:
        writer.writerow([r["image"], r["mask"], *(f"{v:.6f}" for v in r["share"])])
    atomic_write(out / PREDICTIONS_CSV, buffer.getvalue().encode())
    return rows

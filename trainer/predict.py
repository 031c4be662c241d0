"""`tsd predict STUDENT IMAGES… --out FILE`: label images with a trained student, as a CSV of the
top-k classes per image (a segmentation student: `--out DIR` of class-map PNGs, `predict_masks`).

STUDENT is a folder written by `tsd export` (config.json + model.safetensors; a segmentation
export is read by `export_seg.load_export`) or a run folder (student.json + student.safetensors). Each image is preprocessed as the student was validated:
decoded to RGB (EXIF orientation applied), the centred square of `crop_pct` of its short side
(the release's `views.eval_crop`), resized to the input size by `contract.views.view_pixels` (the
function the trainer's validation view goes through), normalised with the student's mean and std.
The one step it skips is the release's storage resize (short side down to `store_size`) before the
crop, so scores can differ slightly from `tsd eval` on the same image. IMAGES are files or folders
(searched recursively for .jpg/.jpeg/.png/.webp/.bmp/.gif/.tif/.tiff).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from pipeline.contract.dense import upsample_logits
from pipeline.contract.errors import UserError, first_line
from pipeline.contract.files import atomic_write
from pipeline.contract.images import pil_to_tensor
from pipeline.contract.views import Views, center_view, normalize, view_pixels

from .export import CONFIG, WEIGHTS, release_manifests, student_preprocessing
from .students import STUDENT_INFO, STUDENT_WEIGHTS, load_student

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def load_predictor(path) -> tuple[torch.nn.Module, dict, list[str]]:
    """(model in eval mode, preprocessing {input_size, mean, std, crop_pct, …}, class names) of an
    exported folder or a run folder."""
    import timm

    path = Path(path)
    if (path / CONFIG).is_file() and (path / WEIGHTS).is_file():
        config = json.loads((path / CONFIG).read_text())
        prep = config.get("pretrained_cfg") or {}
        missing = [k for k in ("input_size", "mean", "std", "crop_pct") if k not in prep]
        if missing or "architecture" not in config or "label_names" not in config:
            raise UserError(f"{path / CONFIG}: not a `tsd export` folder (missing "
                            f"{', '.join(missing or ['architecture or label_names'])})")
        model = timm.create_model(config["architecture"], pretrained=False, num_classes=config["num_classes"],
                                  **config.get("model_args", {}))
        try:
            model.load_state_dict(load_file(str(path / WEIGHTS)))
        except RuntimeError as e:
            raise UserError(f"{path / WEIGHTS}: does not fit {config['architecture']}: {first_line(e)}") from None
        classes = list(config["label_names"])
    elif (path / STUDENT_WEIGHTS).is_file() or path.suffix == ".safetensors":
        model, info = load_student(path)
        prep = student_preprocessing(info, [] if "crop_pct" in info else release_manifests(info))
        classes = list(info["classes"])
    else:
        raise UserError(f"{path}: not a student (expected a `tsd export` folder with {CONFIG} and {WEIGHTS}, or "
                        f"a run folder with {STUDENT_WEIGHTS} and {STUDENT_INFO})")
    return model.eval(), prep, classes


def find_images(paths: list[str]) -> list[Path]:
    """The image files named, and those under the folders named (sorted), each once."""
    found: list[Path] = []
    for name in paths:
        p = Path(name)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"{p}: no such image or folder")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UserError(f"no images in {', '.join(paths)} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return unique


def read_image(path: Path) -> torch.Tensor:
    """An image file as uint8 CHW RGB, its EXIF orientation applied; one line naming it when unreadable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(path.read_bytes())) as im:
            return pil_to_tensor(ImageOps.exif_transpose(im).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path}: cannot be read as an image ({first_line(e)})") from None


def eval_view(path: Path, size: int, crop_pct: float) -> torch.Tensor:
    """The image as the student's validation view: float [3, size, size] in [0, 1]."""
    image = read_image(path)
    _, height, width = image.shape
    return view_pixels(image, center_view(width, height, Views(eval_crop=crop_pct))[0], size)


@torch.no_grad()
def predict(student, images: list[str], top_k: int = 5, batch_size: int = 32) -> tuple[list[dict], list[str]]:
    """Per image {image, top: [(class, probability), …]} best first, and the student's classes."""
    model, prep, classes = load_predictor(student)
    size, k = int(prep["input_size"][-1]), min(top_k, len(classes))
    files = find_images(images)
    rows = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        x = normalize(torch.stack([eval_view(f, size, float(prep["crop_pct"])) for f in chunk]), prep["mean"],
                      prep["std"])
        probs = model(x).float().softmax(1)
        top = probs.topk(k, dim=1)
        for f, p, i in zip(chunk, top.values.tolist(), top.indices.tolist()):
            rows.append({"image": str(f), "top": [(classes[c], q) for c, q in zip(i, p)]})
    return rows, classes


# A segmentation student: a class map per image. The whole image (nothing cropped: a map covers every
# pixel; the aspect ratio is not kept, as the training views' random ratios were not) at the input size,
# logits upsampled bilinearly to the image's own size, their argmax written as OUT/<stem>.png (8-bit
# class ids), and OUT/predictions.csv: each image, its mask file and the share of its pixels per class.
FULL_VIEW = (0.0, 0.0, 1.0, 1.0, 0)
PREDICTIONS_CSV = "predictions.csv"


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


def write_csv(rows: list[dict], out: Path) -> None:
    """image, class_1, prob_1, …, class_k, prob_k: one row per image."""
    k = len(rows[0]["top"])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image"] + [h for r in range(1, k + 1) for h in (f"class_{r}", f"prob_{r}")])
    for row in rows:
        writer.writerow([row["image"]] + [v for name, p in row["top"] for v in (name, f"{p:.6f}")])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, buffer.getvalue().encode())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("student", help="a `tsd export` folder, or a run folder (student.safetensors + student.json)")
    parser.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--out", required=True, help="the CSV to write: image, class_1, prob_1, … per image (a "
                        "segmentation student: a folder of class-map PNGs and predictions.csv)")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image, best first (default 5)")
    parser.add_argument("--batch-size", type=int, default=32)


def segmentation_student(path) -> tuple[torch.nn.Module, dict] | None:
    """(model, student info) when `path` is a segmentation student's export folder, run folder or
    weights; None for a classification student."""
    from .export_seg import INFO, load_export

    path = Path(path)
    exported = path / INFO
    if exported.is_file() and json.loads(exported.read_text()).get("task") == "segmentation":
        return load_export(path)
    if (path / STUDENT_INFO).is_file() or path.suffix == ".safetensors":
        model, info = load_student(path)
        if info.get("task") == "segmentation":
            return model.eval(), info
    return None


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: must be at least 1")
    segmenter = segmentation_student(args.student)
    if segmenter is not None:
        out = Path(args.out)
        if out.suffix.lower() == ".csv":
            raise UserError(f"--out {out}: a segmentation student writes a folder of class-map PNGs (and "
                            f"{PREDICTIONS_CSV} in it): give a folder")
        rows = predict_masks(*segmenter, find_images(args.images), out)
        print(f"{len(rows)} image(s) segmented → {out} (a class-map PNG each, {PREDICTIONS_CSV})")
        return 0
    rows, _ = predict(args.student, args.images, args.top_k, args.batch_size)
    write_csv(rows, Path(args.out))
    print(f"{len(rows)} image(s) labelled → {args.out}")
    return 0

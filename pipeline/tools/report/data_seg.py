"""What the report shows of a segmentation release, beside `data` (whose release summary, picking,
generation stats and run curves serve both tasks).

A segmentation image has no single label: its card shows the teacher's label map (each recorded
view's, pasted back into the image's frame) and, for a real image, its stored mask, as coloured
layers (`thumbs.write_label_thumbs`), with the class shares of the teacher's map in place of a
top-5. A class's frequency is its pixel share in the masks of the real images shown, so the report
still reads only the shards holding what it shows. A run brings its per-class IoU (`tsd eval`'s
per_class_iou.csv) in place of a confusion matrix.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ...contract.files import read_json
from ...contract.masks import class_pixels
from ...contract.samples import M_JSON, SampleMeta, dense_summary, segmentation_sample
from ...contract.tasks import IGNORE_INDEX, headline
from ...contract.views import view_box
from ..segviz import ALPHA, dense_labels, palette
from .data import box_fractions, sample_facts
from .thumbs import PAGE_SIDE, THUMB_SIDE, fitted_size, resized_labels

SHARES_SHOWN = 5   # classes listed per card, by pixel share of the teacher's map


def page_settings(num_classes: int, task: str) -> dict:
    """What the page needs to draw labels: a colour per class (segviz's palette, as `tsd viz overlays`
    draws them), the layers' opacity, and the headline metric its runs are ranked by."""
    key, label = headline(task)
    return {"palette": ["#" + "".join(f"{int(v):02x}" for v in c) for c in palette(num_classes)[:num_classes]],
            "alpha": ALPHA, "headline": {"key": key, "label": label}}


def view_in_frame(logits: np.ndarray, view, width: int, height: int, size: tuple[int, int]) -> np.ndarray:
    """The teacher's label map of one view (dense logits [C, h, w]) in the image's frame at `size`
    (width, height): its box filled with the map (unflipped, as the view was flipped before the
    teacher), IGNORE_INDEX outside the box."""
    x0, y0, x1, y1 = view_box(view, width, height)
    sx, sy = size[0] / width, size[1] / height
    bx0, by0 = min(round(x0 * sx), size[0] - 1), min(round(y0 * sy), size[1] - 1)
    bx1, by1 = max(min(round(x1 * sx), size[0]), bx0 + 1), max(min(round(y1 * sy), size[1]), by0 + 1)
    labels = dense_labels(logits, (by1 - by0, bx1 - bx0))
    if view[4]:
        labels = labels[:, ::-1]
    out = np.full((size[1], size[0]), IGNORE_INDEX, np.uint8)
    out[by0:by1, bx0:bx1] = labels
    return out


def shares(counts: np.ndarray, classes: list[str], top: int = SHARES_SHOWN) -> list[dict]:
    """The `top` classes of a pixel count [C] by share, those present only."""
    total = max(int(counts.sum()), 1)
    order = np.argsort(-counts, kind="stable")[:top]
    return [{"c": int(c), "name": classes[int(c)], "p": float(counts[c] / total)} for c in order if counts[c]]


def sample_record(row: dict, members: dict, classes: list[str]) -> tuple[dict, dict[str, np.ndarray]]:
    """(what a card and a sample page show, the label maps to colour: `teacher` (view 0) and `mask`
    at the card's size, `view<i>` and `mask-page` at the page's). The teacher's dominant class and
    entropy are the index's (`contract.samples.dense_summary`); its confidence is the mean over the
    first view's locations of the top class's probability."""
    where = f"{row['shard']}:{row['uid']}"
    meta = SampleMeta.from_json(members[M_JSON], where)
    c = len(classes)
    mask, logits = segmentation_sample(members, c, where)
    dominant, entropy = dense_summary(logits)
    z = logits[0].astype(np.float64)
    p = np.exp(z - z.max(0, keepdims=True))
    confidence = float((p.max(0) / p.sum(0)).mean())
    card, page = fitted_size(meta.width, meta.height, THUMB_SIDE), fitted_size(meta.width, meta.height, PAGE_SIDE)
    layers, views = {}, []
    for i, (view, zv) in enumerate(zip(meta.views, logits)):
        labels = view_in_frame(zv, view, meta.width, meta.height, page)
        layers[f"view{i}"] = labels
        counts = class_pixels(labels, c)
        top = int(counts.argmax())
        # a view's top1 / p: the class most of its map takes and its pixel share (classification: probability)
        views.append({"box": box_fractions(view, meta.width, meta.height), "flip": bool(view[4]), "top1": top,
                      "top1_name": classes[top], "p": float(counts[top] / max(int(counts.sum()), 1)),
                      "shares": shares(counts, classes)})
    layers["teacher"] = resized_labels(layers["view0"], card)
    rec = {**sample_facts(row, meta), "entropy": entropy, "shares": views[0]["shares"], "teacher_top1": dominant,
           "confidence": confidence, "views": views}
    if mask is not None:
        mask = mask.numpy()
        layers["mask"], layers["mask-page"] = resized_labels(mask, card), resized_labels(mask, page)
        pixels = class_pixels(mask, c)
        rec["mask_pixels"] = pixels.tolist()
        rec["mask_top1"] = int(pixels.argmax()) if pixels.sum() else None
        rec["mask_shares"] = shares(pixels, classes)
    return rec, layers


def mask_pixels(records: list[dict], num_classes: int) -> dict:
    """Pixels per class in the stored masks of the shown real images (a class's frequency in a
    segmentation release, over what the report shows rather than the whole release)."""
    with_mask = [r["mask_pixels"] for r in records if "mask_pixels" in r]
    total = np.sum(with_mask, axis=0) if with_mask else np.zeros(num_classes, np.int64)
    return {"images": len(with_mask), "pixels": [int(v) for v in total]}


def run_iou(folder: Path, classes: list[str]) -> dict:
    """A segmentation run's per-class IoU, student beside teacher: `tsd eval`'s
    eval/per_class_iou.csv (with the probe's column), else the lists of its metrics.json; {} for a
    run that has neither (a classification run)."""
    from trainer.evaluate_seg import PER_CLASS_CSV
    from trainer.runfiles import EVAL, METRICS

    path = folder / EVAL / PER_CLASS_CSV
    if path.exists():
        def number(text):
            return float(text) if text not in ("", None) else None
        with open(path, newline="") as f:
            rows = [{"class": r["class"], "iou": number(r.get("iou")), "teacher_iou": number(r.get("teacher_iou")),
                     "probe_iou": number(r.get("probe_iou"))} for r in csv.DictReader(f)]
        return {"per_class_iou": rows, "per_class_iou_from": str(path)}
    val = (read_json(folder / METRICS) or {}).get("val") or {}
    if not isinstance(val.get("per_class_iou"), list):
        return {}
    student, teacher = val["per_class_iou"], val.get("teacher_per_class_iou") or []
    rows = [{"class": name, "iou": student[i] if i < len(student) else None,
             "teacher_iou": teacher[i] if i < len(teacher) else None, "probe_iou": None}
            for i, name in enumerate(classes)]
    return {"per_class_iou": rows, "per_class_iou_from": str(folder / METRICS)}

"""Segmentation metrics from one confusion matrix accumulated over a whole split: mIoU, pixel
accuracy, per-class IoU. The teacher's probe and the students' evaluation both count here, so their
numbers are comparable. Pixels labelled IGNORE_INDEX are not counted.
"""
from __future__ import annotations

from .tasks import IGNORE_INDEX


def confusion(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX):
    """[C, C] int64 counts (rows: true class, columns: predicted) of one batch of class maps,
    computed on their device without a host sync (accumulate, then read once per split)."""
    import torch

    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    # ignored pixels go to a spare bin past the matrix instead of being indexed out (indexing syncs)
    flat = torch.where(keep, target * num_classes + pred.clamp(0, num_classes - 1),
                       torch.full_like(target, num_classes * num_classes))
    counts = torch.bincount(flat, minlength=num_classes * num_classes + 1)
    return counts[:num_classes * num_classes].reshape(num_classes, num_classes)


def scores(conf) -> dict:
    """mIoU, pixel accuracy and per-class IoU from a confusion matrix (tensor or nested lists).

    A class with no pixel in the truth nor in the predictions has no IoU (None) and is left out of
    the mean, as in mmsegmentation and torchmetrics' `JaccardIndex(average='macro')` without absent
    classes; a class present in either side counts, with IoU 0 when it never matches."""
    import numpy as np

    c = np.asarray(conf.cpu() if hasattr(conf, "cpu") else conf, dtype=np.float64)
    tp = np.diag(c)
    union = c.sum(0) + c.sum(1) - tp
    per_class = [float(t / u) if u > 0 else None for t, u in zip(tp, union)]
    present = [v for v in per_class if v is not None]
    total = c.sum()
    return {"miou": float(np.mean(present)) if present else 0.0,
            "pixel_acc": float(tp.sum() / total) if total else 0.0,
            "per_class_iou": per_class, "pixels": int(total)}

"""Probe for segmentation: DINOv2's linear segmentation head fit on the frozen teacher's patch tokens.

- the head: `contract.dense.make_dense_head` (BatchNorm + 1×1 conv) on the last layer's patch-token
  grid [D, h, w] (`contract.dense.patch_grid`), kind `dense-linear` in head.safetensors' metadata;
- inputs: the same stored pixels and views as the classification probe (`probe.views` per train
  image: the centred view and random ones; val: the centred view). The grids are computed once and
  cached in memory in the teacher's dtype (N × views × D × h × w: 0.8 MB per view for ViT-g at 224 px
  in bf16 on a GPU, 1.5 MB in float32 on a CPU; a real-size probe holds that many times its views);
- target: the stored mask (as the release stores it) cut by `contract.views.view_mask`, the same box
  and flip as the pixels, at the teacher's input size; the logits are brought to that size by
  `contract.dense.upsample_logits` (bilinear), DINOv2's way: the loss and the metrics are per pixel of
  the view, never on a mask shrunk to the patch grid (which would lose thin classes);
- loss: pixel cross-entropy, `ignore_index=IGNORE_INDEX`; AdamW at `probe.lr`, cosine schedule,
  `probe.epochs`, `probe.batch_size` views per step, seeded;
- metrics (probe.json): mIoU, pixel accuracy and per-class IoU from one confusion matrix over the whole
  val split (`contract.miou`), on each val image's centred view at the teacher's input size.
A finetuned segmentation teacher (`probe.mode: finetune`) is not made here.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..config import JobConfig
from ..contract import storage
from ..contract.dense import upsample_logits
from ..contract.errors import UserError
from ..contract.files import write_json
from ..contract.images import stored_size
from ..contract.layout import HEAD_FILE, PROBE_METRICS
from ..contract.miou import confusion, scores
from ..contract.tasks import IGNORE_INDEX, SEGMENTATION
from ..contract.views import views_mask_batch
from ..models.teacher import describe_backbone, head_kind, save_head
from .probe_features import extract_features, fit_head, probe_views
from .segmentation import stored_mask


def probe_masks(job: JobConfig, rows: list[dict], train: bool) -> torch.Tensor:
    """uint8 [N × views, S, S]: each row's stored mask cut by its probe views (S: the teacher's input
    size), in the order `extract_features` gives the grids."""
    out = []
    for row in rows:
        width, height = stored_size(row["width"], row["height"], job.data.store_size)
        try:
            _, mask = stored_mask(job, row["mask_path"], width, height)
        except (OSError, ValueError) as e:
            raise UserError(f"{row['mask_path']}: {e}") from None
        out.append(views_mask_batch(mask, probe_views(job, row, width, height, train), job.teacher.img_size))
    size = job.teacher.img_size
    return torch.cat(out) if out else torch.zeros(0, size, size, dtype=torch.uint8)


def pixel_loss(head, grids: torch.Tensor, masks: torch.Tensor) -> torch.Tensor | None:
    """Pixel cross-entropy of the head's upsampled logits against the mask views; None when every
    pixel of the batch is ignored (no gradient to take)."""
    target = masks.long()
    if not bool((target != IGNORE_INDEX).any()):
        return None
    logits = upsample_logits(head(grids), tuple(target.shape[-2:]))
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


@torch.no_grad()
def dense_scores(head, grids: torch.Tensor, masks: torch.Tensor, num_classes: int, batch: int = 256) -> dict:
    """`contract.miou.scores` of the head over all the views given (one confusion matrix)."""
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(0, len(grids), batch):
        logits = upsample_logits(head(grids[i:i + batch].float()), tuple(masks.shape[-2:]))
        conf += confusion(logits.argmax(1), masks[i:i + batch], num_classes)
    return scores(conf)


def run_dense_probe(job: JobConfig, out_dir, device, index, t0: float) -> dict:
    """Write the dense head and probe.json for a segmentation index; return the metrics."""

    if job.probe.mode == "finetune":
        raise UserError("probe.mode: 'finetune' is not available for segmentation; use probe.mode: probe")
    kind = head_kind(SEGMENTATION, job.probe.head)
    train, val = index.split("train"), index.split("val")
    classes = index.classes
    g_train = extract_features(job, train, True, device, "probe: train patch grids", index.limits, dense=True)
    m_train = probe_masks(job, train, True)
    g_val = extract_features(job, val, False, device, "probe: val patch grids", index.limits, dense=True)
    m_val = probe_masks(job, val, False)
    if len(g_train) != len(m_train) or len(g_val) != len(m_val):
        raise UserError(f"{job.data.index}: {len(g_train)} train views but {len(m_train)} mask views")
    head = fit_head(job, g_train, m_train, len(classes), kind, pixel_loss)
    fit, val_scores = dense_scores(head, g_train, m_train, len(classes)), dense_scores(head, g_val, m_val, len(classes))
    backbone = describe_backbone(job.teacher)
    grid = list(g_train.shape[-2:])
    metrics = {
        "task": SEGMENTATION,
        "train_miou": fit["miou"], "train_pixel_acc": fit["pixel_acc"],
        "val_miou": val_scores["miou"], "val_pixel_acc": val_scores["pixel_acc"],
        "val_per_class_iou": dict(zip(classes, val_scores["per_class_iou"])), "val_pixels": val_scores["pixels"],
        "n_train": len(train), "n_val": len(val), "views_per_image": len(g_train) // len(train),
        "feature_dim": g_train.shape[1], "grid": grid, "mask_size": job.teacher.img_size,
        "num_classes": len(classes), "ignore_index": IGNORE_INDEX, "head": kind,
        "seconds": round(time.time() - t0, 2), "backbone": backbone,
    }
    meta = {"head": kind, "in_dim": g_train.shape[1], "num_classes": len(classes), "hidden": job.probe.hidden,
            "classes": classes, "teacher_arch": job.teacher.arch, "task": SEGMENTATION, "grid": grid}
    save_head(head, storage.join(out_dir, HEAD_FILE), meta)
    write_json(storage.join(out_dir, PROBE_METRICS), metrics)
    return metrics


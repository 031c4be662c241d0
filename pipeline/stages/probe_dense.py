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

`probe.mode: finetune` makes a finetuned segmentation teacher (`run_dense_finetune`): the same dense
head trained with the last `probe.blocks` blocks and the final norm on pixels, by classification's
recipe (`stages.probe_finetune`: layer-wise lr decay, warmup + cosine, a fresh random view per image
per epoch), the loss `pixel_loss` on each random view's stored mask cut by `view_mask` with the same
box and flip. Its probe.json has the probe's keys (train and val scores both on centred views) and
says which parts were tuned; head.safetensors holds the dense head and the tuned blocks.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..config import JobConfig
from ..contract import storage
from ..contract.dense import grid_size, upsample_logits
from ..contract.errors import UserError
from ..contract.files import write_json
from ..contract.images import stored_size
from ..contract.layout import HEAD_FILE, PROBE_METRICS
from ..contract.miou import confusion, scores
from ..contract.tasks import IGNORE_INDEX, SEGMENTATION
from ..contract.views import center_view, view_mask, views_mask_batch
from ..models.teacher import describe_backbone, head_in_dim, head_kind, save_head
from .probe_features import extract_features, fit_head, probe_views
from .probe_finetune import _stored_pixels, centred_outputs, finetune, finetune_record, tuned_weights
from .segmentation import stored_mask


def stored_masks(job: JobConfig, rows: list[dict]) -> list[torch.Tensor]:
    """Each row's mask as the release stores it (uint8 [H, W] at its image's stored size)."""
    out = []
    for row in rows:
        width, height = stored_size(row["width"], row["height"], job.data.store_size)
        try:
            out.append(stored_mask(job, row["mask_path"], width, height)[1])
        except (OSError, ValueError) as e:
            raise UserError(f"{row['mask_path']}: {e}") from None
    return out


def probe_masks(job: JobConfig, rows: list[dict], train: bool) -> torch.Tensor:
    """uint8 [N × views, S, S]: each row's stored mask cut by its probe views (S: the teacher's input
    size), in the order `extract_features` gives the grids."""
    size = job.teacher.img_size
    out = [views_mask_batch(mask, probe_views(job, row, mask.shape[1], mask.shape[0], train), size)
           for row, mask in zip(rows, stored_masks(job, rows))]
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
        conf += logits_confusion(head(grids[i:i + batch].float()), masks[i:i + batch], num_classes)
    return scores(conf)


def logits_confusion(logits: torch.Tensor, masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`contract.miou.confusion` of patch-grid logits, upsampled to the mask views' size, against them."""
    return confusion(upsample_logits(logits, tuple(masks.shape[-2:])).argmax(1), masks, num_classes)


def dense_metrics(job: JobConfig, classes: list[str], fit: dict, val: dict, **rest) -> dict:
    """probe.json of a segmentation teacher: its train and val scores, and `rest` (counts, sizes, ...)."""
    return {"task": SEGMENTATION,
            "train_miou": fit["miou"], "train_pixel_acc": fit["pixel_acc"],
            "val_miou": val["miou"], "val_pixel_acc": val["pixel_acc"],
            "val_per_class_iou": dict(zip(classes, val["per_class_iou"])), "val_pixels": val["pixels"],
            "mask_size": job.teacher.img_size, "num_classes": len(classes), "ignore_index": IGNORE_INDEX,
            **rest, "backbone": describe_backbone(job.teacher)}


def dense_meta(job: JobConfig, kind: str, in_dim: int, classes: list[str], grid: list[int], **rest) -> dict:
    """head.safetensors' metadata of a segmentation teacher."""
    return {"head": kind, "in_dim": in_dim, "num_classes": len(classes), "hidden": job.probe.hidden,
            "classes": classes, "teacher_arch": job.teacher.arch, "task": SEGMENTATION, "grid": grid, **rest}


def run_dense_probe(job: JobConfig, out_dir, device, index, t0: float) -> dict:
    """Write the dense head and probe.json for a segmentation index; return the metrics."""
    kind = head_kind(SEGMENTATION, job.probe.head)
    if job.probe.mode == "finetune":
        return run_dense_finetune(job, out_dir, device, index, t0, kind)
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
    grid = list(g_train.shape[-2:])
    metrics = dense_metrics(job, classes, fit, val_scores, n_train=len(train), n_val=len(val),
                            views_per_image=len(g_train) // len(train), feature_dim=g_train.shape[1], grid=grid,
                            head=kind, seconds=round(time.time() - t0, 2))
    save_head(head, storage.join(out_dir, HEAD_FILE), dense_meta(job, kind, g_train.shape[1], classes, grid))
    write_json(storage.join(out_dir, PROBE_METRICS), metrics)
    return metrics


# -- a finetuned segmentation teacher (probe.mode: finetune) ----------------------------------------
def centred_dense_scores(job: JobConfig, backbone, head, images: list[torch.Tensor], masks: list[torch.Tensor],
                         num_classes: int, device, kind: str) -> dict:
    """`contract.miou.scores` of the finetuned teacher over the centred views of the images (one
    confusion matrix), each against its mask cut by the same view."""
    size = job.teacher.img_size
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for chunk, logits in centred_outputs(job, backbone, head, images, device, kind):
        target = torch.stack([view_mask(masks[j], center_view(masks[j].shape[1], masks[j].shape[0], job.views)[0],
                                        size) for j in chunk])
        conf += logits_confusion(logits, target, num_classes)
    return scores(conf)


def run_dense_finetune(job: JobConfig, out_dir, device, index, t0: float, kind: str) -> dict:
    """`probe.mode: finetune` for segmentation: head.safetensors holds the dense head and the tuned blocks."""
    train, val = index.split("train"), index.split("val")
    classes, size = index.classes, job.teacher.img_size
    train_images, val_images = _stored_pixels(job, train, index.limits), _stored_pixels(job, val, index.limits)
    train_masks, val_masks = stored_masks(job, train), stored_masks(job, val)
    backbone, head, names = finetune(job, train, train_images, len(classes), device, kind,
                                     lambda j, view: view_mask(train_masks[j], view, size), pixel_loss)
    tuned = tuned_weights(backbone, names)
    fit = centred_dense_scores(job, backbone, head, train_images, train_masks, len(classes), device, kind)
    val_scores = centred_dense_scores(job, backbone, head, val_images, val_masks, len(classes), device, kind)
    in_dim, grid = head_in_dim(backbone, kind), list(grid_size(backbone, size, size))
    metrics = dense_metrics(job, classes, fit, val_scores, n_train=len(train), n_val=len(val), views_per_image=1,
                            feature_dim=in_dim, grid=grid, head=kind, **finetune_record(names, tuned),
                            seconds=round(time.time() - t0, 2))
    save_head(head, storage.join(out_dir, HEAD_FILE),
              dense_meta(job, kind, in_dim, classes, grid, mode="finetune", tuned=names), tuned)
    write_json(storage.join(out_dir, PROBE_METRICS), metrics)
    return metrics

"""Probe: adapt the teacher to the task; by default by training only a head on its frozen features.

Features come from the same stored pixels the worker will later show the teacher (source image →
stored bytes → decoded → recorded view), so the head is fit on the distribution it will label.

`probe.mode: finetune` is the paper's counterpoint, a finetuned teacher: the head, the final norm
and the last `probe.blocks` blocks trained on pixels, with layer-wise lr decay, warmup + cosine and
a fresh random view per image per epoch; the recipe is `stages.probe_finetune`'s, shared with
segmentation (`stages.probe_dense`). The trained weights go into teacher/head.safetensors with the
head (see models.teacher).
"""
from __future__ import annotations

import time

import torch

from ..config import JobConfig, add_device_argument, add_job_arguments, load_job_args
from ..contract import storage
from ..contract.device import resolve_device
from ..contract.errors import UserError
from ..contract.files import reuse, write_json
from ..contract.layout import HEAD_FILE, PROBE_METRICS
from ..contract.tasks import CLASSIFICATION, SEGMENTATION, headline
from ..models.teacher import describe_backbone, feature_dim, save_head
from ..sources.index import read_source_index
from .jobdir import input_fingerprints, marker, probe_fingerprint, probe_inputs
from .probe_dense import run_dense_probe
from .probe_features import extract_features, fit_head, label_loss
from .probe_finetune import _stored_pixels, centred_outputs, finetune, finetune_record, tuned_weights


def teacher_line(metrics: dict) -> str:
    """'teacher val top-1 0.700' (or 'val mIoU' for segmentation): how a stage's line names the probe's result."""
    key, label = headline(metrics.get("task", CLASSIFICATION))
    return f"teacher val {label} {metrics[f'val_{key}']:.3f}"


@torch.no_grad()
def accuracy(head, feats, labels) -> float:
    return float((head(feats.float()).argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def run_probe(job: JobConfig, out_dir, device: str = "auto") -> dict:
    """Write `out_dir/teacher/head.safetensors` and `teacher/probe.json`; return the metrics."""
    t0 = time.time()
    dev = resolve_device(device)
    index = read_source_index(job.data)
    train, val = index.split("train"), index.split("val")
    if not train:
        raise UserError(f"{job.data.index}: no training images to probe on")
    if index.task == SEGMENTATION:
        return run_dense_probe(job, out_dir, dev, index, t0)
    if job.probe.mode == "finetune":
        return run_finetune(job, out_dir, dev, index, t0)
    f_train = extract_features(job, train, True, dev, "probe: train features", index.limits)
    per_row = len(f_train) // len(train)
    y_train = torch.tensor([r["label"] for r in train]).repeat_interleave(per_row)
    f_val = extract_features(job, val, False, dev, "probe: val features", index.limits)
    y_val = torch.tensor([r["label"] for r in val], dtype=torch.long)
    head = fit_head(job, f_train, y_train, len(index.classes))
    metrics = {
        "train_top1": accuracy(head, f_train, y_train),
        "val_top1": accuracy(head, f_val, y_val),
        "n_train": len(train), "n_val": len(val), "views_per_image": per_row,
        "feature_dim": f_train.shape[1], "num_classes": len(index.classes),
        "head": job.probe.head, "seconds": round(time.time() - t0, 2), "backbone": describe_backbone(job.teacher),
    }
    meta = {"head": job.probe.head, "in_dim": f_train.shape[1], "num_classes": len(index.classes),
            "hidden": job.probe.hidden, "classes": index.classes, "teacher_arch": job.teacher.arch}
    save_head(head, storage.join(out_dir, HEAD_FILE), meta)
    write_json(storage.join(out_dir, PROBE_METRICS), metrics)
    return metrics


# -- a finetuned teacher (probe.mode: finetune) -----------------------------------------------------
def centred_top1(job: JobConfig, backbone, head, rows: list[dict], images: list[torch.Tensor], device) -> float:
    """Top-1 of the finetuned teacher on the centred view of each image."""
    if not rows:
        return float("nan")
    hits = 0
    for chunk, logits in centred_outputs(job, backbone, head, images, device, job.probe.head):
        hits += int((logits.argmax(1) == torch.tensor([rows[j]["label"] for j in chunk])).sum())
    return hits / len(rows)


def run_finetune(job: JobConfig, out_dir, device, index, t0: float) -> dict:
    """`probe.mode: finetune`: teacher/head.safetensors holds the head and the trained blocks."""
    train, val = index.split("train"), index.split("val")
    train_images = _stored_pixels(job, train, index.limits)
    val_images = _stored_pixels(job, val, index.limits)
    labels = torch.tensor([r["label"] for r in train])
    backbone, head, names = finetune(job, train, train_images, len(index.classes), device, job.probe.head,
                                     lambda j, view: labels[j], label_loss)
    tuned = tuned_weights(backbone, names)
    metrics = {
        "train_top1": centred_top1(job, backbone, head, train, train_images, device),
        "val_top1": centred_top1(job, backbone, head, val, val_images, device),
        "n_train": len(train), "n_val": len(val), "views_per_image": 1,
        "feature_dim": feature_dim(backbone), "num_classes": len(index.classes), "head": job.probe.head,
        **finetune_record(names, tuned),
        "seconds": round(time.time() - t0, 2), "backbone": describe_backbone(job.teacher),
    }
    meta = {"head": job.probe.head, "in_dim": feature_dim(backbone), "num_classes": len(index.classes),
            "hidden": job.probe.hidden, "classes": index.classes, "teacher_arch": job.teacher.arch,
            "mode": "finetune", "tuned": names}
    save_head(head, storage.join(out_dir, HEAD_FILE), meta, tuned)
    write_json(storage.join(out_dir, PROBE_METRICS), metrics)
    return metrics


def probe_stage(job: JobConfig, out, device: str = "auto", force: bool = False) -> tuple[dict, bool]:
    """(metrics, reused) — the teacher head is refit only when its inputs changed."""
    out = storage.location(out)
    inputs = probe_inputs(job)
    return reuse(marker(out, "probe"), probe_fingerprint(inputs), lambda: run_probe(job, out, device),
                 outputs=[storage.join(out, HEAD_FILE)], force=force, inputs=input_fingerprints(inputs))


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    add_job_arguments(p)
    add_device_argument(p)
    p.add_argument("--force", action="store_true", help="refit even when a matching head exists")


def run(args) -> int:
    metrics, reused = probe_stage(load_job_args(args), args.out, args.device, args.force)
    what = "finetuned teacher" if metrics.get("mode") == "finetune" else "teacher"
    if metrics.get("task") == SEGMENTATION:
        print(f"probe: {what} val mIoU {metrics['val_miou']:.3f}, pixel accuracy {metrics['val_pixel_acc']:.3f} "
              f"(train mIoU {metrics['train_miou']:.3f}, {metrics['n_train']} train / {metrics['n_val']} val images)"
              f"{' [reused]' if reused else ''}")
        return 0
    print(f"probe: {what} val top-1 {metrics['val_top1']:.3f} (train {metrics['train_top1']:.3f}, "
          f"{metrics['n_train']} train / {metrics['n_val']} val images){' [reused]' if reused else ''}")
    return 0

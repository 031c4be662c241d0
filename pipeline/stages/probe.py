"""Probe: adapt the teacher to the task; by default by training only a head on its frozen features.

Features come from the same stored pixels the worker will later show the teacher (source image →
stored bytes → decoded → recorded view), so the head is fit on the distribution it will label.

`probe.mode: finetune` is the paper's counterpoint, a finetuned teacher. Its recipe:
- trained: the head, the final norm and the last `probe.blocks` transformer blocks; the rest stays
  frozen (and is not back-propagated through). `probe.blocks: all` is a full finetune: every block
  and the embeddings (patch embedding, class/register tokens, position embedding) are trained;
- layer-wise lr decay: the head and the final norm at `probe.lr`, block k from the top (k = 1 the
  last) at `probe.lr · probe.layer_decay^k`, the embeddings of a full finetune one step below the
  first block; AdamW, `probe.weight_decay` on the matrices only;
- schedule: `probe.epochs` over the training images, `probe.batch_size` images per step, linear
  warmup for `probe.warmup_epochs`, then cosine decay to 0;
- augmentation: every epoch, each training image is seen once through a fresh random view drawn
  like the recorded ones (random resized crop in `views.scale`/`views.ratio`, flip when
  `views.flip`), seeded by (seed, uid, epoch), on the stored pixels; validation on the centred view.
The trained weights go into teacher/head.safetensors with the head (see models.teacher).
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from ..config import JobConfig, add_device_argument, add_job_arguments, load_job_args
from ..contract import storage
from ..contract.device import autocast, resolve_device
from ..contract.errors import UserError
from ..contract.files import reuse, write_json
from ..contract.ids import derive_seed
from ..contract.layout import HEAD_FILE, PROBE_METRICS
from ..contract.progress import Progress
from ..contract.tasks import CLASSIFICATION, SEGMENTATION, headline
from ..contract.views import center_view, normalize, sample_views, views_batch
from ..models.teacher import (backbone_features, data_config, describe_backbone, feature_dim, load_backbone,
                              make_head, save_head, tuned_parts)
from ..sources.index import read_source_index
from .jobdir import input_fingerprints, marker, probe_fingerprint, probe_inputs
from .probe_dense import run_dense_probe
from .probe_features import _stored_image, extract_features, fit_head, probe_views  # noqa: F401 - the probe's API


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
def _stored_pixels(job: JobConfig, rows: list[dict], limits: dict) -> list[torch.Tensor]:
    """`_stored_image` of each row, decoded in threads."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda row: _stored_image(job, row, limits), rows))


def finetune_groups(job: JobConfig, backbone, head) -> tuple[list[dict], list[str]]:
    """AdamW parameter groups with layer-wise lr decay (see the module doc), and the tuned parts' names."""
    p = job.probe
    groups, names = [], []

    def add(part, scale):
        if isinstance(part, torch.nn.Parameter):   # a token or position embedding of a full finetune
            params = [part.requires_grad_(True)]
        else:
            params = list(part.train().requires_grad_(True).parameters())
        groups.extend([{"params": [q for q in params if q.ndim > 1], "weight_decay": p.weight_decay, "scale": scale},
                       {"params": [q for q in params if q.ndim <= 1], "weight_decay": 0.0, "scale": scale}])

    for depth, name, module in tuned_parts(backbone, p.blocks):
        add(module, p.layer_decay ** depth)
        names.append(name)
    add(head, 1.0)
    return [g for g in groups if g["params"]], names


def finetune(job: JobConfig, train: list[dict], images: list[torch.Tensor], num_classes: int, device):
    """The finetuned teacher: (backbone, head, names of the tuned parts), trained by the module doc's
    recipe. The training images' stored pixels are held in memory (uint8)."""
    p, size = job.probe, job.teacher.img_size
    torch.manual_seed(job.seed)
    backbone = load_backbone(job.teacher).to(device)
    mean, std = data_config(backbone)
    head = make_head(p.head, feature_dim(backbone), num_classes, p.hidden).to(device)
    groups, names = finetune_groups(job, backbone, head)
    opt = torch.optim.AdamW(groups, lr=p.lr)
    labels = torch.tensor([r["label"] for r in train])
    steps_per_epoch = max(1, -(-len(train) // p.batch_size))
    total, warmup = p.epochs * steps_per_epoch, round(p.warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(job.seed)
    step = 0

    def random_view(j: int, epoch: int) -> torch.Tensor:
        image = images[j]
        view = sample_views(derive_seed(job.seed, train[j]["uid"], f"finetune/{epoch}"), image.shape[2],
                            image.shape[1], 1, job.views)
        return views_batch(image, view, size)

    # the views of a batch are cut in threads (torch's resize releases the GIL), in batch order
    with ThreadPoolExecutor(max_workers=4) as pool, Progress("probe: finetune", p.epochs, unit="epochs") as bar:
        for epoch in range(p.epochs):
            order = torch.randperm(len(train), generator=gen)
            for i in range(0, len(train), p.batch_size):
                idx = order[i:i + p.batch_size].tolist()
                x = normalize(torch.cat(list(pool.map(lambda j: random_view(j, epoch), idx))).to(device), mean, std)
                step = _finetune_step(job, backbone, head, opt, x, labels[idx].to(device), step, total, warmup)
            bar.update(1, images=len(train))
    return backbone.eval().requires_grad_(False), head.eval().requires_grad_(False), names


# Copied from trainer.loop.learning_rate: the trainer imports nothing of pipeline/ but its contract, so
# the one schedule is kept in two places, and tests/stages/test_copies.py checks they stay the same.
def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """LR of update `step` (0-based): linear warmup to `peak`, then cosine decay to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def _finetune_step(job: JobConfig, backbone, head, opt, x, labels, step: int, total: int, warmup: int) -> int:
    """One update at the schedule's lr (warmup, then cosine), every group at its layer-decay scale;
    returns the next step."""
    scale = learning_rate(step, total, warmup, 1.0)
    for g in opt.param_groups:
        g["lr"] = job.probe.lr * g["scale"] * scale
    with autocast(x.device, job.teacher.dtype):
        logits = head(backbone_features(backbone, x).float())
    loss = F.cross_entropy(logits.float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return step + 1


@torch.no_grad()
def _pixel_accuracy(job: JobConfig, backbone, head, rows: list[dict], images: list[torch.Tensor], device) -> float:
    """Top-1 of the finetuned teacher on the centred view of each image."""
    if not rows:
        return float("nan")
    mean, std = data_config(backbone)
    hits = 0
    for i in range(0, len(rows), job.teacher.batch_size):
        chunk = range(i, min(i + job.teacher.batch_size, len(rows)))
        x = torch.cat([views_batch(images[j], center_view(images[j].shape[2], images[j].shape[1], job.views),
                                   job.teacher.img_size) for j in chunk])
        logits = head(backbone_features(backbone, normalize(x.to(device), mean, std)).float())
        hits += int((logits.argmax(1).cpu() == torch.tensor([rows[j]["label"] for j in chunk])).sum())
    return hits / len(rows)


def run_finetune(job: JobConfig, out_dir, device, index, t0: float) -> dict:
    """`probe.mode: finetune`: teacher/head.safetensors holds the head and the trained blocks."""
    train, val = index.split("train"), index.split("val")
    train_images = _stored_pixels(job, train, index.limits)
    val_images = _stored_pixels(job, val, index.limits)
    backbone, head, names = finetune(job, train, train_images, len(index.classes), device)
    tuned = {k: v for k, v in backbone.state_dict().items() if any(k == n or k.startswith(n + ".") for n in names)}
    metrics = {
        "train_top1": _pixel_accuracy(job, backbone, head, train, train_images, device),
        "val_top1": _pixel_accuracy(job, backbone, head, val, val_images, device),
        "n_train": len(train), "n_val": len(val), "views_per_image": 1,
        "feature_dim": feature_dim(backbone), "num_classes": len(index.classes), "head": job.probe.head,
        "mode": "finetune", "tuned": names, "tuned_parameters": sum(v.numel() for v in tuned.values()),
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
    if metrics.get("task") == SEGMENTATION:
        print(f"probe: teacher val mIoU {metrics['val_miou']:.3f}, pixel accuracy {metrics['val_pixel_acc']:.3f} "
              f"(train mIoU {metrics['train_miou']:.3f}, {metrics['n_train']} train / {metrics['n_val']} val images)"
              f"{' [reused]' if reused else ''}")
        return 0
    what = "finetuned teacher" if metrics.get("mode") == "finetune" else "teacher"
    print(f"probe: {what} val top-1 {metrics['val_top1']:.3f} (train {metrics['train_top1']:.3f}, "
          f"{metrics['n_train']} train / {metrics['n_val']} val images){' [reused]' if reused else ''}")
    return 0

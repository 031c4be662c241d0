"""Probe: adapt the frozen teacher to the task by training only a head on its features.

Features come from the same stored pixels the worker will later show the teacher (source image →
stored bytes → decoded → recorded view), so the head is fit on the distribution it will label.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from ..config import JobConfig, add_device_argument, add_job_arguments, load_job_args
from ..contract import storage
from ..contract.configlib import to_dict
from ..contract.device import resolve_device, torch_dtype
from ..contract.errors import UserError
from ..contract.files import reuse, write_json
from ..contract.ids import derive_seed, fingerprint
from ..contract.images import decode_image, store_image
from ..contract.layout import HEAD_FILE, PROBE_METRICS
from ..contract.progress import Progress
from ..contract.views import center_view, normalize, sample_views, views_batch
from ..models.teacher import (backbone_features, data_config, feature_dim, load_backbone, make_head, save_head,
                              weights_sha256)
from ..sources.decode import open_rgb
from ..sources.index import index_sha256, read_source_index
from .jobdir import marker


def probe_views(job: JobConfig, row: dict, width: int, height: int, train: bool) -> list:
    views = center_view(width, height, job.views)
    if train and job.probe.views > 1:
        seed = derive_seed(job.seed, row["uid"], "probe")
        views += sample_views(seed, width, height, job.probe.views - 1, job.views)
    return views


def _load_views(job: JobConfig, row: dict, train: bool, limits: dict) -> torch.Tensor:
    data = job.data
    image = decode_image(store_image(open_rgb(row["path"], **limits), data.store_size, data.image_format, data.quality))
    views = probe_views(job, row, image.shape[2], image.shape[1], train)
    return views_batch(image, views, job.teacher.img_size)


@torch.no_grad()
def extract_features(job: JobConfig, rows: list[dict], train: bool, device, desc: str,
                     limits: dict | None = None) -> torch.Tensor:
    """Teacher features [N × views, D] in the order of `rows` (views of a row are consecutive)."""
    backbone = load_backbone(job.teacher).to(device)
    mean, std = data_config(backbone)
    dtype = torch_dtype(job.teacher.dtype, device)
    backbone = backbone.to(dtype)
    out, batch, bs = [], [], job.teacher.batch_size
    with ThreadPoolExecutor(max_workers=4) as pool, Progress(desc, len(rows)) as bar:
        # decoding runs ahead in threads (PIL and torch resize release the GIL)
        for views in pool.map(lambda r: _load_views(job, r, train, limits or {}), rows):
            batch.append(views)
            bar.update(1)
            if sum(len(b) for b in batch) >= bs:
                out.append(_forward(backbone, batch, mean, std, device, dtype))
                batch = []
        if batch:
            out.append(_forward(backbone, batch, mean, std, device, dtype))
    return torch.cat(out) if out else torch.zeros(0, feature_dim(backbone))


def _forward(backbone, batch, mean, std, device, dtype):
    x = normalize(torch.cat(batch).to(device), mean, std).to(dtype)
    return backbone_features(backbone, x).float().cpu()


def fit_head(job: JobConfig, feats: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """AdamW on cached features, cosine schedule; seeded, so reruns give the same head."""
    p = job.probe
    torch.manual_seed(job.seed)
    head = make_head(p.head, feats.shape[1], num_classes, p.hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    steps_per_epoch = max(1, -(-len(feats) // p.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, p.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(job.seed)
    for _ in range(p.epochs):
        order = torch.randperm(len(feats), generator=gen)
        for i in range(0, len(feats), p.batch_size):
            idx = order[i:i + p.batch_size]
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


@torch.no_grad()
def accuracy(head, feats, labels) -> float:
    return float((head(feats).argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def run_probe(job: JobConfig, out_dir, device: str = "auto") -> dict:
    """Write `out_dir/teacher/head.safetensors` and `teacher/probe.json`; return the metrics."""
    t0 = time.time()
    dev = resolve_device(device)
    index = read_source_index(job.data)
    train, val = index.split("train"), index.split("val")
    if not train:
        raise UserError(f"{job.data.index}: no training images to probe on")
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
        "head": job.probe.head, "seconds": round(time.time() - t0, 2),
    }
    meta = {"head": job.probe.head, "in_dim": f_train.shape[1], "num_classes": len(index.classes),
            "hidden": job.probe.hidden, "classes": index.classes, "teacher_arch": job.teacher.arch}
    save_head(head, storage.join(out_dir, HEAD_FILE), meta)
    write_json(storage.join(out_dir, PROBE_METRICS), metrics)
    return metrics


def probe_stage(job: JobConfig, out, device: str = "auto", force: bool = False) -> tuple[dict, bool]:
    """(metrics, reused) — the teacher head is refit only when its inputs changed."""
    out = storage.location(out)
    fp = fingerprint([to_dict(job.teacher, paths=False), to_dict(job.probe), to_dict(job.data, paths=False),
                      to_dict(job.views), job.seed, index_sha256(job.data.index), weights_sha256(job.teacher)])
    return reuse(marker(out, "probe"), fp, lambda: run_probe(job, out, device),
                 outputs=[storage.join(out, HEAD_FILE)], force=force)


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    add_job_arguments(p)
    add_device_argument(p)
    p.add_argument("--force", action="store_true", help="refit even when a matching head exists")


def run(args) -> int:
    metrics, reused = probe_stage(load_job_args(args), args.out, args.device, args.force)
    print(f"probe: teacher val top-1 {metrics['val_top1']:.3f} (train {metrics['train_top1']:.3f}, "
          f"{metrics['n_train']} train / {metrics['n_val']} val images){' [reused]' if reused else ''}")
    return 0

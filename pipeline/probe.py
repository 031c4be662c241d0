"""Probe: adapt the frozen teacher to the task by training only a head on its features.

Features come from the same stored pixels the worker will later show the teacher (source image →
stored bytes → decoded → recorded view), so the head is fit on the distribution it will label.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from . import format as fmt
from .config import JobConfig
from .ingest import open_rgb
from .models.teacher import backbone_features, data_config, feature_dim, load_backbone, make_head, save_head
from .runtime import pick_device, torch_dtype
from .source_index import read_source_index
from .storing import store_bytes


def probe_views(job: JobConfig, row: dict, width: int, height: int, train: bool) -> list:
    spec = job.views.spec()
    views = fmt.center_view(width, height, spec)
    if train and job.probe.views > 1:
        seed = fmt.derive_seed(job.seed, row["uid"], "probe")
        views += fmt.sample_views(seed, width, height, job.probe.views - 1, spec)
    return views


def _load_views(job: JobConfig, row: dict, train: bool, limits: dict) -> torch.Tensor:
    image = fmt.decode_image(store_bytes(open_rgb(row["path"], **limits), job.data))
    views = probe_views(job, row, image.shape[2], image.shape[1], train)
    return fmt.views_batch(image, views, job.teacher.img_size)


@torch.no_grad()
def extract_features(job: JobConfig, rows: list[dict], train: bool, device, desc: str,
                     limits: dict | None = None) -> torch.Tensor:
    """Teacher features [N × views, D] in the order of `rows` (views of a row are consecutive)."""
    from tqdm import tqdm

    backbone = load_backbone(job.teacher).to(device)
    mean, std = data_config(backbone)
    dtype = torch_dtype(job.teacher.dtype, device)
    backbone = backbone.to(dtype)
    out, batch, bs = [], [], job.teacher.batch_size
    with ThreadPoolExecutor(max_workers=4) as pool, tqdm(total=len(rows), desc=desc, leave=False) as bar:
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
    x = fmt.normalize(torch.cat(batch).to(device), mean, std).to(dtype)
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


def run_probe(job: JobConfig, out_dir: str | Path, device: str = "auto") -> dict:
    """Write `out_dir/teacher/head.safetensors` and `teacher/probe.json`; return the metrics."""
    t0 = time.time()
    dev = pick_device(device)
    index = read_source_index(job.data)
    train, val = index.split("train"), index.split("val")
    if not train:
        raise ValueError(f"{job.data.index}: no training images to probe on")
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
    out = Path(out_dir)
    meta = {"head": job.probe.head, "in_dim": f_train.shape[1], "num_classes": len(index.classes),
            "hidden": job.probe.hidden, "classes": index.classes, "teacher_arch": job.teacher.arch}
    save_head(head, out / fmt.HEAD_FILE, meta)
    (out / fmt.PROBE_METRICS).write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return metrics

"""What both probes share (classification: `stages.probe`; segmentation: `stages.probe_dense`): the
views a probe shows the frozen teacher, its outputs on them computed once (pooled features, or
patch-token grids), and the head fit on those cached outputs."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from ..config import JobConfig
from ..contract.dense import patch_grid
from ..contract.device import torch_dtype
from ..contract.ids import derive_seed
from ..contract.images import decode_image, store_image
from ..contract.progress import Progress
from ..contract.views import center_view, normalize, sample_views, views_batch
from ..models.teacher import backbone_features, data_config, feature_dim, load_backbone, make_head
from ..sources.decode import open_rgb


def views_per_row(job: JobConfig, train: bool) -> int:
    """How many views a probe shows the teacher of each image: the centred one, plus random ones in train."""
    return max(1, job.probe.views) if train else 1


def probe_views(job: JobConfig, row: dict, width: int, height: int, train: bool) -> list:
    views = center_view(width, height, job.views)
    if views_per_row(job, train) > 1:
        seed = derive_seed(job.seed, row["uid"], "probe")
        views += sample_views(seed, width, height, views_per_row(job, train) - 1, job.views)
    return views


def _stored_image(job: JobConfig, row: dict, limits: dict) -> torch.Tensor:
    """The image as the release will store it (source → stored bytes → decoded), uint8 CHW."""
    data = job.data
    return decode_image(store_image(open_rgb(row["path"], **limits), data.store_size, data.image_format, data.quality))


def _load_views(job: JobConfig, row: dict, train: bool, limits: dict) -> torch.Tensor:
    image = _stored_image(job, row, limits)
    views = probe_views(job, row, image.shape[2], image.shape[1], train)
    return views_batch(image, views, job.teacher.img_size)


@torch.no_grad()
def extract_features(job: JobConfig, rows: list[dict], train: bool, device, desc: str,
                     limits: dict | None = None, dense: bool = False) -> torch.Tensor:
    """Teacher features [N × views, D] in the order of `rows` (views of a row are consecutive);
    `dense`: the patch-token grids [N × views, D, h, w] instead (`contract.dense.patch_grid`).

    They stay in the dtype the teacher computed them in (bf16 on a GPU: half of float32, and no
    precision lost, since their users upcast each batch exactly), in one tensor allocated at the
    first batch: a real-size dense cache is tens of GiB, and chunks joined at the end would need it twice."""
    backbone = load_backbone(job.teacher).to(device)
    mean, std = data_config(backbone)
    dtype = torch_dtype(job.teacher.dtype, device)
    backbone = backbone.to(dtype)
    total = len(rows) * views_per_row(job, train)
    cache, filled = None, 0

    def keep(chunk: torch.Tensor):
        nonlocal cache, filled
        if cache is None:
            # the chunks' own layout: patch grids come channels-innermost (a permuted token map), and the
            # head's kernels, hence its fit to the last bit, depend on it (torch.cat kept it channels-last too)
            layout = torch.channels_last if chunk.dim() == 4 and chunk.stride(1) == 1 else torch.contiguous_format
            cache = torch.empty((total, *chunk.shape[1:]), dtype=chunk.dtype, memory_format=layout)
        cache[filled:filled + len(chunk)] = chunk
        filled += len(chunk)

    batch, bs = [], job.teacher.batch_size
    with ThreadPoolExecutor(max_workers=4) as pool, Progress(desc, len(rows)) as bar:
        # decoding runs ahead in threads (PIL and torch resize release the GIL)
        for views in pool.map(lambda r: _load_views(job, r, train, limits or {}), rows):
            batch.append(views)
            bar.update(1)
            if sum(len(b) for b in batch) >= bs:
                keep(_forward(backbone, batch, mean, std, device, dtype, dense))
                batch = []
        if batch:
            keep(_forward(backbone, batch, mean, std, device, dtype, dense))
    if cache is not None:
        assert filled == total, f"{filled} views computed, {total} expected"
        return cache
    return torch.zeros(0, backbone.num_features, 1, 1) if dense else torch.zeros(0, feature_dim(backbone))


def _forward(backbone, batch, mean, std, device, dtype, dense: bool = False):
    x = normalize(torch.cat(batch).to(device), mean, std).to(dtype)
    return (patch_grid if dense else backbone_features)(backbone, x).cpu()


def label_loss(head, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Classification's batch loss: cross-entropy of the head's logits on the labels."""
    return F.cross_entropy(head(feats), labels)


def fit_head(job: JobConfig, feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
             kind: str | None = None, loss=None):
    """AdamW on cached features, cosine schedule; seeded, so reruns give the same head.
    `kind`: the head (default `probe.head`); `loss(head, feats, targets)`: the batch loss (default
    cross-entropy on labels; None from it skips the update, e.g. a batch of ignored pixels)."""
    p = job.probe
    torch.manual_seed(job.seed)
    head = make_head(kind or p.head, feats.shape[1], num_classes, p.hidden).train()
    loss = loss or label_loss
    opt = torch.optim.AdamW(head.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    steps_per_epoch = max(1, -(-len(feats) // p.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, p.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(job.seed)
    for _ in range(p.epochs):
        order = torch.randperm(len(feats), generator=gen)
        for i in range(0, len(feats), p.batch_size):
            idx = order[i:i + p.batch_size]
            value = loss(head, feats[idx].float(), labels[idx])
            if value is not None:
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
            sched.step()
    return head.eval()

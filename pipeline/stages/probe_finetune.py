"""A finetuned teacher (`probe.mode: finetune`), the paper's counterpoint to probing: what both tasks
share (classification: `stages.probe.run_finetune`; segmentation: `stages.probe_dense.run_dense_finetune`).
The task gives its head kind, each view's target and the batch loss; the recipe is this one:
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
  `views.flip`), seeded by (seed, uid, epoch), on the stored pixels (and, for segmentation, its
  stored mask cut by the same view); scored on the centred view.
The trained weights go into teacher/head.safetensors with the head (see models.teacher).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from ..config import JobConfig
from ..contract.device import autocast
from ..contract.ids import derive_seed
from ..contract.progress import Progress
from ..contract.views import center_view, normalize, sample_views, views_batch
from ..models.teacher import data_config, head_in_dim, head_inputs, load_backbone, make_head, tuned_parts
from .probe_features import _stored_image

# loss(head, head inputs, targets) -> a scalar, or None to skip the update (as `probe_features.fit_head`)
Loss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], "torch.Tensor | None"]
# target(i, view) -> the training target of image i seen through view [x, y, w, h, flip]
Target = Callable[[int, list], torch.Tensor]


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


def finetune(job: JobConfig, rows: list[dict], images: list[torch.Tensor], num_classes: int, device,
             kind: str, target: Target, loss: Loss):
    """The finetuned teacher: (backbone, head of `kind`, names of the tuned parts), trained by the
    module doc's recipe; `target(i, view)` gives image i's target for a view, stacked per batch,
    `loss(head, inputs, targets)` the batch loss. The training images' stored pixels are held in
    memory (uint8)."""
    p, size = job.probe, job.teacher.img_size
    torch.manual_seed(job.seed)
    backbone = load_backbone(job.teacher).to(device)
    mean, std = data_config(backbone)
    head = make_head(kind, head_in_dim(backbone, kind), num_classes, p.hidden).to(device)
    groups, names = finetune_groups(job, backbone, head)
    opt = torch.optim.AdamW(groups, lr=p.lr)
    steps_per_epoch = max(1, -(-len(rows) // p.batch_size))
    total, warmup = p.epochs * steps_per_epoch, round(p.warmup_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(job.seed)
    step = 0

    def random_view(j: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = images[j]
        view = sample_views(derive_seed(job.seed, rows[j]["uid"], f"finetune/{epoch}"), image.shape[2],
                            image.shape[1], 1, job.views)
        return views_batch(image, view, size), target(j, view[0])

    # the views of a batch are cut in threads (torch's resize releases the GIL), in batch order
    with ThreadPoolExecutor(max_workers=4) as pool, Progress("probe: finetune", p.epochs, unit="epochs") as bar:
        for epoch in range(p.epochs):
            order = torch.randperm(len(rows), generator=gen)
            for i in range(0, len(rows), p.batch_size):
                pixels, targets = zip(*pool.map(lambda j, e=epoch: random_view(j, e), order[i:i + p.batch_size].tolist()))
                x = normalize(torch.cat(pixels).to(device), mean, std)
                step = _finetune_step(job, backbone, head, opt, x, torch.stack(targets).to(device), step, total,
                                      warmup, kind, loss)
            bar.update(1, images=len(rows))
    return backbone.eval().requires_grad_(False), head.eval().requires_grad_(False), names


# Copied from trainer.loop.learning_rate: the trainer imports nothing of pipeline/ but its contract, so
# the one schedule is kept in two places, and tests/stages/test_copies.py checks they stay the same.
def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """LR of update `step` (0-based): linear warmup to `peak`, then cosine decay to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def _finetune_step(job: JobConfig, backbone, head, opt, x, targets, step: int, total: int, warmup: int,
                   kind: str, loss: Loss) -> int:
    """One update at the schedule's lr (warmup, then cosine), every group at its layer-decay scale;
    the backbone under the teacher's autocast, the head and the loss in float32. A loss of None (a
    batch of ignored pixels) skips the update; the schedule moves on either way. Returns the next step."""
    scale = learning_rate(step, total, warmup, 1.0)
    for g in opt.param_groups:
        g["lr"] = job.probe.lr * g["scale"] * scale
    with autocast(x.device, job.teacher.dtype):
        inputs = head_inputs(backbone, x, kind)
    value = loss(head, inputs.float(), targets)
    if value is not None:
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    return step + 1


@torch.no_grad()
def centred_outputs(job: JobConfig, backbone, head, images: list[torch.Tensor], device,
                    kind: str) -> Iterator[tuple[range, torch.Tensor]]:
    """(indices, the head's float32 outputs on the CPU) per batch of `teacher.batch_size`: the
    finetuned teacher on each image's centred view, how a finetune is scored."""
    mean, std = data_config(backbone)
    for i in range(0, len(images), job.teacher.batch_size):
        chunk = range(i, min(i + job.teacher.batch_size, len(images)))
        x = torch.cat([views_batch(images[j], center_view(images[j].shape[2], images[j].shape[1], job.views),
                                   job.teacher.img_size) for j in chunk])
        yield chunk, head(head_inputs(backbone, normalize(x.to(device), mean, std), kind).float()).float().cpu()


def tuned_weights(backbone, names: list[str]) -> dict:
    """The tuned parts' weights, by their backbone state-dict names (what `save_head` stores)."""
    return {k: v for k, v in backbone.state_dict().items() if any(k == n or k.startswith(n + ".") for n in names)}


def finetune_record(names: list[str], tuned: dict) -> dict:
    """What probe.json and the head file's metadata say of a finetuned teacher."""
    return {"mode": "finetune", "tuned": names, "tuned_parameters": sum(v.numel() for v in tuned.values())}

"""Distillation losses: L = (1-a)·CE(student, label) + a·T²·KL(softmax(t/T) ‖ softmax(s/T)).

CE uses real samples only (mixes carry no label); the KL term uses every sample in the batch.
Losses are computed in float32 whatever the autocast dtype of the forward pass.

Segmentation (`seg_distill_loss`) is the same sum per pixel. Its resolutions:
- KD at the TEACHER's grid: the student's logits are resized (bilinear, antialiased when shrinking) to
  the teacher's patch grid, where the teacher's logits were computed. Upsampling the teacher instead
  would add no information (its logits are bilinear between grid cells there) and cost (S/h)² more
  KL terms per image; a ViT-S/14 student at the teacher's input size has the teacher's grid already.
- CE at the MASK's size (the view's S×S mask): the student's logits upsampled bilinearly
  (`contract.dense.upsample_logits`, how every prediction meets a mask), so the full-resolution
  labels are all used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.contract.dense import upsample_logits
from pipeline.contract.tasks import IGNORE_INDEX


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                 is_real: torch.Tensor, alpha: float, temperature: float):
    """(loss, ce, kd) for one batch.

    ce: mean cross-entropy over the real samples of the batch (0 when there are none);
    kd: KL(teacher ‖ student) at temperature T, summed over classes and averaged over ALL samples
    ('batchmean'); loss = (1 - alpha)·ce + alpha·T²·kd. The T² keeps the gradient scale of the
    soft term independent of T (Hinton et al. 2015). alpha = 0 is plain finetuning."""
    s = student_logits.float()
    t = teacher_logits.float()
    # a masked mean rather than indexing: no host sync, and mixes (label -1) never reach CE
    real = is_real.float()
    per_sample = F.cross_entropy(s, labels.clamp(min=0), reduction="none")
    ce = (per_sample * real).sum() / real.sum().clamp(min=1.0)
    kd = F.kl_div(F.log_softmax(s / temperature, dim=1), F.log_softmax(t / temperature, dim=1),
                  reduction="batchmean", log_target=True)
    loss = (1.0 - alpha) * ce + alpha * temperature ** 2 * kd
    return loss, ce, kd


def resize_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Dense logits [N, C, h, w] at `size`: bilinear (`upsample_logits`), antialiased when it shrinks
    (a large student map brought to a coarse grid would otherwise sample it, not average it)."""
    size = tuple(size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    if logits.shape[-2] < size[0] or logits.shape[-1] < size[1]:
        return upsample_logits(logits, size)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False, antialias=True)


def seg_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                     is_real: torch.Tensor, alpha: float, temperature: float):
    """(loss, ce, kd) for one batch of dense logits.

    student_logits [N, C, h', w'] (any resolution), teacher_logits [N, C, h, w] (its patch grid),
    mask [N, S, S] class ids (IGNORE_INDEX unlabelled; all of a mix's pixels).
    ce: cross-entropy averaged over the labelled pixels of the real samples (0 when there are none),
    at the mask's size; kd: KL(teacher ‖ student) at T, summed over classes and averaged over every
    pixel of the teacher's grid of every sample; loss = (1 - alpha)·ce + alpha·T²·kd."""
    s = student_logits.float()
    t = teacher_logits.float()
    target = mask.long()
    # masked means, no indexing: no host sync; mixes weigh 0 by is_real as well as by their all-ignore masks
    labelled = (target != IGNORE_INDEX).float() * is_real.float()[:, None, None]
    per_pixel = F.cross_entropy(resize_logits(s, target.shape[-2:]), target.clamp(max=s.shape[1] - 1),
                                reduction="none")
    ce = (per_pixel * labelled).sum() / labelled.sum().clamp(min=1.0)
    log_s = F.log_softmax(resize_logits(s, t.shape[-2:]) / temperature, dim=1)
    log_t = F.log_softmax(t / temperature, dim=1)
    pixels = t.shape[0] * t.shape[2] * t.shape[3]
    kd = F.kl_div(log_s, log_t, reduction="sum", log_target=True) / pixels
    loss = (1.0 - alpha) * ce + alpha * temperature ** 2 * kd
    return loss, ce, kd


def feature_loss(projected: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine similarity) between projected student features and the teacher's."""
    return (1.0 - F.cosine_similarity(projected.float(), teacher_features.float(), dim=1)).mean()

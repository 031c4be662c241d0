"""Distillation losses: L = (1-a)·CE(student, label) + a·T²·KL(softmax(t/T) ‖ softmax(s/T)).

CE uses real samples only (mixes carry no label); the KL term uses every sample in the batch.
Losses are computed in float32 whatever the autocast dtype of the forward pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def feature_loss(projected: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine similarity) between projected student features and the teacher's."""
    return (1.0 - F.cosine_similarity(projected.float(), teacher_features.float(), dim=1)).mean()

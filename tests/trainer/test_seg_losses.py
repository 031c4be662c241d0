"""The segmentation loss: (1-a)·CE on the labelled pixels of real samples + a·T²·KL per pixel on
every sample, checked against direct computations; and a segmentation step reads nothing back from
the device."""
import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import resize_logits, seg_distill_loss

IGNORE = 255


def batch(n=4, c=3, grid=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, c, grid, grid, generator=g)
    teacher = torch.randn(n, c, grid, grid, generator=g)
    mask = torch.randint(0, c, (n, size, size), generator=g, dtype=torch.int64).to(torch.uint8)
    mask[:, :2] = IGNORE
    is_real = torch.tensor([True, True, False, False][:n])
    mask[~is_real] = IGNORE          # mixes: all ignored, as the loader makes them
    return student, teacher, mask, is_real


def direct_ce(student, mask, is_real):
    """Mean CE over the labelled pixels of the real samples, at the mask's size, pixel by pixel."""
    up = F.interpolate(student, size=mask.shape[-2:], mode="bilinear", align_corners=False)
    total, count = 0.0, 0
    for i in range(len(mask)):
        if not is_real[i]:
            continue
        for y in range(mask.shape[1]):
            for x in range(mask.shape[2]):
                label = int(mask[i, y, x])
                if label != IGNORE:
                    total -= float(torch.log_softmax(up[i, :, y, x], 0)[label])
                    count += 1
    return total / count


def test_ce_counts_only_labelled_pixels_of_real_samples():
    student, teacher, mask, is_real = batch()
    _, ce, _ = seg_distill_loss(student, teacher, mask, is_real, alpha=0.0, temperature=1.0)
    assert ce.item() == pytest.approx(direct_ce(student, mask, is_real), rel=1e-5)
    # a mix given a full mask still does not count: is_real weighs it out
    labelled = mask.clone()
    labelled[2:] = 0
    _, ce_mixes_labelled, _ = seg_distill_loss(student, teacher, labelled, is_real, alpha=0.0, temperature=1.0)
    assert ce_mixes_labelled.item() == pytest.approx(ce.item(), rel=1e-6)
    # changing the student where every pixel is ignored (the mixes) changes nothing in CE
    other = student.clone()
    other[2:] = torch.randn_like(other[2:]) * 10
    assert seg_distill_loss(other, teacher, mask, is_real, 0.0, 1.0)[1].item() == pytest.approx(ce.item(), rel=1e-6)


def test_a_batch_of_mixes_only_has_no_ce_and_a_finite_loss():
    student, teacher, mask, _ = batch()
    loss, ce, kd = seg_distill_loss(student, teacher, torch.full_like(mask, IGNORE), torch.zeros(4, dtype=torch.bool),
                                    alpha=0.5, temperature=2.0)
    assert ce.item() == 0.0 and kd.item() > 0 and loss.item() == pytest.approx(0.5 * 4 * kd.item(), rel=1e-6)


def test_kd_is_zero_when_the_student_is_the_teacher():
    _, teacher, mask, is_real = batch()
    _, _, kd = seg_distill_loss(teacher.clone(), teacher, mask, is_real, alpha=1.0, temperature=3.0)
    assert abs(kd.item()) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_is_the_per_pixel_kl_at_t_scaled_by_t_squared(temperature):
    student, teacher, mask, is_real = batch(seed=1)
    loss, ce, kd = seg_distill_loss(student, teacher, mask, is_real, alpha=1.0, temperature=temperature)
    p_t = torch.softmax(teacher / temperature, 1)
    kl = (p_t * (torch.log_softmax(teacher / temperature, 1) - torch.log_softmax(student / temperature, 1))).sum(1)
    assert kd.item() == pytest.approx(kl.mean().item(), rel=1e-5)          # averaged over every pixel, every sample
    assert loss.item() == pytest.approx(temperature ** 2 * kd.item(), rel=1e-6)
    half, ce_half, kd_half = seg_distill_loss(student, teacher, mask, is_real, alpha=0.25, temperature=temperature)
    assert half.item() == pytest.approx(0.75 * ce_half.item() + 0.25 * temperature ** 2 * kd_half.item(), rel=1e-6)


def test_kd_meets_the_teacher_at_its_grid_and_ce_the_mask_at_its_size():
    student, teacher, mask, is_real = batch(grid=4, size=8)
    big = F.interpolate(student, size=(16, 16), mode="nearest")      # a student map 4x finer than the teacher's grid
    _, _, kd = seg_distill_loss(big, teacher, mask, is_real, 1.0, 1.0)
    log_s = torch.log_softmax(resize_logits(big, (4, 4)), 1)
    direct = (torch.softmax(teacher, 1) * (torch.log_softmax(teacher, 1) - log_s)).sum(1).mean()
    assert kd.item() == pytest.approx(direct.item(), rel=1e-5)
    assert resize_logits(big, (4, 4)).shape == (4, 3, 4, 4) and resize_logits(student, (8, 8)).shape == (4, 3, 8, 8)
    # averaging, not sampling: a constant map stays constant when shrunk
    assert torch.allclose(resize_logits(torch.ones(1, 2, 16, 16), (4, 4)), torch.ones(1, 2, 4, 4))


def test_losses_are_float32_under_bf16_logits():
    student, teacher, mask, is_real = batch()
    out = seg_distill_loss(student.bfloat16(), teacher.half(), mask, is_real, 0.5, 2.0)
    assert all(t.dtype == torch.float32 and math.isfinite(t.item()) for t in out)

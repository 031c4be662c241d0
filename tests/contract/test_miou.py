"""The confusion-matrix mIoU against a direct computation written here."""
import numpy as np
import pytest
import torch

from pipeline.contract.dense import make_dense_head, patch_grid, upsample_logits
from pipeline.contract.miou import confusion, scores
from pipeline.contract.tasks import IGNORE_INDEX


def _direct_miou(preds, targets, num_classes):
    """Per class: |pred ∩ true| / |pred ∪ true| over all pixels not ignored; mean over classes seen."""
    ious = []
    for c in range(num_classes):
        inter = union = 0
        for p, t in zip(preds, targets):
            valid = t != IGNORE_INDEX
            inter += int(((p == c) & (t == c) & valid).sum())
            union += int((((p == c) | (t == c)) & valid).sum())
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def test_accumulated_confusion_gives_the_direct_miou():
    rng = np.random.default_rng(1)
    preds, targets = [], []
    conf = torch.zeros(5, 5, dtype=torch.int64)
    for _ in range(4):
        t = rng.integers(0, 4, size=(2, 9, 7))             # class 4 never true ...
        t[rng.random(t.shape) < 0.2] = IGNORE_INDEX
        p = np.where(rng.random(t.shape) < 0.6, t, rng.integers(0, 5, size=t.shape))   # ... but predicted
        p[t == IGNORE_INDEX] = rng.integers(0, 5, size=int((t == IGNORE_INDEX).sum()))
        preds.append(p), targets.append(t)
        conf += confusion(torch.from_numpy(p), torch.from_numpy(t), 5)
    got = scores(conf)
    assert got["miou"] == pytest.approx(_direct_miou(preds, targets, 5), abs=1e-12)
    valid = np.concatenate([t.reshape(-1) for t in targets]) != IGNORE_INDEX
    correct = np.concatenate([(p == t).reshape(-1) for p, t in zip(preds, targets)])
    assert got["pixel_acc"] == pytest.approx(correct[valid].mean(), abs=1e-12)
    assert got["per_class_iou"][4] == 0.0 and got["pixels"] == int(valid.sum())


def test_a_class_absent_from_both_sides_is_left_out():
    t = torch.tensor([[0, 0, 1, IGNORE_INDEX]])
    got = scores(confusion(t.clamp(max=1), t, 3))
    assert got["per_class_iou"] == [1.0, 1.0, None] and got["miou"] == 1.0


def test_the_dense_head_maps_patch_tokens_to_the_grid():
    import timm

    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=56,
                            depth=1, embed_dim=48, num_heads=2)
    x = torch.randn(2, 3, 56, 56)
    grid = patch_grid(vit, x)
    assert grid.shape == (2, 48, 4, 4)
    logits = make_dense_head(48, 6).eval()(grid)
    assert logits.shape == (2, 6, 4, 4)
    assert upsample_logits(logits, (56, 56)).shape == (2, 6, 56, 56)

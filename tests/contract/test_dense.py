"""The segmentation contract: a mask's view matches its image's view, dense teacher encodings round-trip."""
import numpy as np
import pytest
import torch

from pipeline.contract.masks import decode_mask, store_mask
from pipeline.contract.samples import (M_DENSE_LOGITS, M_DENSE_REST, M_DENSE_TOPK_IDX, decode_dense,
                                       encode_dense, npy_load)
from pipeline.contract.tasks import IGNORE_INDEX
from pipeline.contract.views import view_mask, view_pixels, views_mask_batch


def _scene(h=60, w=90):
    """An image whose red channel is its mask's class × 60 (classes 0-3 in vertical bands)."""
    cls = np.zeros((h, w), np.uint8)
    for c, x0 in enumerate((0, 20, 45, 70)):
        cls[:, x0:] = c
    cls[:5] = IGNORE_INDEX
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[0] = torch.from_numpy(np.where(cls == IGNORE_INDEX, 250, cls * 60).astype(np.uint8))
    return image, torch.from_numpy(cls)


@pytest.mark.parametrize("view", [[0.1, 0.2, 0.5, 0.7, 0], [0.3, 0.0, 0.6, 1.0, 1], [0.0, 0.0, 1.0, 1.0, 0]])
def test_a_mask_view_has_the_box_and_flip_of_its_image_view(view):
    image, mask = _scene()
    pixels = view_pixels(image, view, 32)[0] * 255          # the red channel: class × 60 inside bands
    labels = view_mask(mask, view, 32)
    assert labels.dtype == torch.uint8 and labels.shape == (32, 32)
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}   # nearest: never a blend
    # wherever the (bilinear, antialiased) image is a pure class colour, the nearest mask says that class
    expected = torch.where(labels == IGNORE_INDEX, torch.tensor(250.0), labels.float() * 60)
    pure = torch.stack([(pixels - v).abs() < 0.5 for v in (0, 60, 120, 180, 250)]).any(0)
    assert pure.float().mean() > 0.5
    assert torch.equal((pixels - expected).abs()[pure] < 0.5, torch.ones(int(pure.sum()), dtype=torch.bool))
    # flip: the flipped view is the unflipped one mirrored
    mirrored = view_mask(mask, [*view[:4], 1 - view[4]], 32)
    assert torch.equal(torch.flip(mirrored, dims=[1]), labels)


def test_views_mask_batch_stacks_views():
    _, mask = _scene()
    views = [[0.0, 0.0, 1.0, 1.0, 0], [0.5, 0.5, 0.5, 0.5, 1]]
    batch = views_mask_batch(mask, views, 16)
    assert batch.shape == (2, 16, 16) and torch.equal(batch[1], view_mask(mask, views[1], 16))


def test_a_stored_mask_is_resized_like_its_image_and_lossless():
    _, mask = _scene(200, 300)
    data = store_mask(mask.numpy(), 100)
    back = decode_mask(data)
    assert back.shape == (100, 150)                        # stored_size of a 300x200 image, short side 100
    assert set(back.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
    assert torch.equal(decode_mask(store_mask(back.numpy(), 100)), back)   # at its size: unchanged
    assert store_mask(mask.numpy(), 100) == data                           # fixed encoder: same bytes


def test_a_bad_mask_member_names_where():
    with pytest.raises(ValueError, match="shard-1/x: bad mask member"):
        decode_mask(b"not a png", "shard-1/x")


def test_dense_full_and_topk_round_trip():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 4, 5)).astype(np.float32) * 3
    full = encode_dense(logits, None)
    assert set(full) == {M_DENSE_LOGITS}
    assert np.allclose(decode_dense(full, 6), logits, atol=1e-2)
    top = encode_dense(logits, 2)
    assert M_DENSE_TOPK_IDX in top and npy_load(top[M_DENSE_TOPK_IDX]).dtype == np.uint8
    back = decode_dense(top, 6)
    assert back.shape == logits.shape
    # the top-2 classes per location and their probabilities (at T=1) survive
    p = torch.softmax(torch.from_numpy(logits), 1).numpy()
    q = torch.softmax(torch.from_numpy(back), 1).numpy()
    order = np.argsort(-logits, axis=1)[:, :2]
    assert np.array_equal(np.argsort(-back, axis=1, kind="stable")[:, :2], order)
    assert np.allclose(np.take_along_axis(q, order, 1), np.take_along_axis(p, order, 1), atol=2e-3)
    # the rest mass is stored per location, and spread evenly over the other classes
    rest = npy_load(top[M_DENSE_REST]).astype(np.float64)
    assert rest.shape == (3, 4, 5)
    assert np.allclose(q.sum(1), 1.0, atol=1e-3)


def test_dense_members_refuse_wrong_shapes():
    with pytest.raises(ValueError, match="expected \\[K, 7, h, w\\]"):
        decode_dense(encode_dense(np.zeros((1, 6, 2, 2), np.float32), None), 7)
    with pytest.raises(ValueError, match="no dense teacher logits"):
        decode_dense({}, 6, "s")

"""The trainer tests' releases: small and real, built once per session.

A release here is real: JPEG images in tar shards written by `pipeline.contract.shards` (via
`trainer.synthetic`), K=3 recorded views from `contract.views.sample_views`, teacher logits computed on those exact view pixels, a
manifest.json listing every shard with its sha256, bytes and count.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer.synthetic import write_release, write_seg_release

_built: dict = {}


def _release(tmp_path_factory, name: str, writer=write_release, **kw) -> Path:
    """Build each kind of release once per session (the test modules share this module)."""
    if name not in _built:
        _built[name] = writer(tmp_path_factory.mktemp(name), **kw)
    return _built[name]


@pytest.fixture(scope="session")
def release(tmp_path_factory) -> Path:
    """4 colour classes: 128 train (4 shards), 64 val (2 shards), 96 mixes (3 shards), K=3, 40-60 px."""
    return _release(tmp_path_factory, "release", classes=4, train_per_class=32, val_per_class=16, mixes=96,
                    views=3, store_size=40, shard_size=32)


@pytest.fixture(scope="session")
def rich_release(tmp_path_factory) -> Path:
    """Top-k teacher logits and teacher features, 5 classes (so top-5 is defined)."""
    return _release(tmp_path_factory, "rich", classes=5, train_per_class=16, val_per_class=8, mixes=32,
                    shard_size=16, features=True, topk=3)


@pytest.fixture(scope="session")
def seg_release(tmp_path_factory) -> Path:
    """Segmentation (task in the manifest): 3 classes of shapes, 48 train (6 shards), 16 val (2 shards), 16
    mixes (2 shards), K=2, 40-60 px, masks with 5% ignored pixels, full dense teacher logits on an 8x8 grid,
    teacher/probe.json."""
    return _release(tmp_path_factory, "seg", write_seg_release, classes=3, train=48, val=16, mixes=16, views=2,
                    store_size=40, shard_size=8)


@pytest.fixture
def single_thread():
    """In-process training on one compute thread (restored after): steady timings on a busy box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

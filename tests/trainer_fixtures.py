"""Fixtures of the trainer tests: small real releases on disk, configs, and ways to damage shards.

A release here is real: JPEG images in tar shards written by `pipeline.contract.shards` (via
`trainer.synthetic`), K=3 recorded views from `contract.views.sample_views`, teacher logits computed on
those exact view pixels, a manifest.json listing every shard with its sha256, bytes and count.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from a model hub

from pipeline.contract.layout import MANIFEST, SHARD_SUFFIX, shard_name  # noqa: E402
from pipeline.contract.samples import SampleMeta  # noqa: E402
from pipeline.contract.shards import read_shard, tar_bytes  # noqa: E402
from trainer.synthetic import write_release  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
_built: dict = {}


def _release(tmp_path_factory, name: str, **kw) -> Path:
    """Build each kind of release once per session (the test modules share this module)."""
    if name not in _built:
        _built[name] = write_release(tmp_path_factory.mktemp(name), **kw)
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


@pytest.fixture
def single_thread():
    """In-process training on one compute thread (restored after): steady timings on a busy box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config_dict(release_path, **sections) -> dict:
    """A small, fast training config on `release_path`; `sections` override per section."""
    config = {
        "releases": [str(release_path)],
        "student": {"arch": "resnet10t", "img_size": 32},
        "loss": {"mode": "distill", "alpha": 0.5, "temperature": 2.0},
        "data": {"mix_ratio": 0.25, "batch_size": 32, "workers": 2, "shuffle_buffer": 64},
        "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01, "epochs": 3, "warmup_epochs": 1},
        "runtime": {"device": "cpu", "seed": 0, "checkpoint_every": 3, "log_every": 1},
    }
    for section, values in sections.items():
        config[section] = dict(config[section], **values) if isinstance(values, dict) else values
    return config


def write_config(path: Path, release_path, **sections) -> Path:
    path.write_text(yaml.safe_dump(config_dict(release_path, **sections)))
    return path


def trainer_env() -> dict:
    # one compute thread: runs compared bitwise use the same count, and a busy 2-core box does not
    # stall multi-threaded kernels
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def train_command(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "train", str(config), "--out", str(out), *extra]


def run_training(config: Path, out: Path, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_command(config, out, *extra), env=trainer_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def copy_release(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def shard_path(release_path: Path, kind: str, split: str, number: int = 0) -> Path:
    return release_path / f"{shard_name(kind, split, number)}{SHARD_SUFFIX}"


def corrupt_sample_image(shard: Path, index: int = 1) -> str:
    """Replace the image bytes of the index-th sample of a shard; returns that sample's key."""
    samples = list(read_shard(str(shard)))
    key, members = samples[index]
    members["jpg"] = b"\xff\xd8 this is not a JPEG any more"
    shard.write_bytes(tar_bytes(samples))
    return key


def truncate_shard(shard: Path, keep: float = 0.5) -> None:
    """Cut a shard in the middle of its data, as an interrupted copy would."""
    data = shard.read_bytes()
    shard.write_bytes(data[: int(len(data) * keep)])


def shard_samples(release_path: Path, kind: str, split: str) -> dict:
    """uid → (members, meta) over every shard of (kind, split), read with the format's own reader."""
    manifest = json.loads((release_path / MANIFEST).read_text())
    out = {}
    for entry in manifest["shards"]:
        if (entry["kind"], entry["split"]) == (kind, split):
            for key, members in read_shard(str(release_path / f"{entry['name']}{SHARD_SUFFIX}")):
                out[key] = (members, SampleMeta.from_json(members["json"]))
    return out


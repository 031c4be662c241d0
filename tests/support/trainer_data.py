"""Helpers of the trainer tests: configs, commands, and ways to damage shards (the small releases
they train on are fixtures in tests/trainer/conftest.py)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from paths import REPO

from pipeline.contract.layout import MANIFEST, SHARD_SUFFIX, shard_name
from pipeline.contract.samples import SampleMeta
from pipeline.contract.shards import read_shard, tar_bytes


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


def wait_for_steps(proc: subprocess.Popen, run_dir: Path, steps: int, timeout: float = 240) -> None:
    """Wait until the running trainer `proc` has logged `steps` lines in log.jsonl (or ended)."""
    log = run_dir / "log.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= steps:
            return
        time.sleep(0.02)


def kill_after_checkpoint(config: Path, out: Path, env: dict | None = None, checkpoint: int = 3,
                          logged: int = 5) -> None:
    """Start `tsd train` and SIGKILL it once checkpoint `checkpoint` exists and log.jsonl holds
    `logged` steps (steps past the checkpoint that a resume trains again)."""
    import signal

    proc = subprocess.Popen(train_command(config, out), env=env or trainer_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "log.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoints" / f"step-{checkpoint:08d}" / "state.pt").exists() and log.exists() \
                and len(log.read_text().splitlines()) >= logged:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"


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


def compare_dict(*releases, **over) -> dict:
    """A small, fast `tsd compare` config on `releases`; `over` replaces whole top-level keys."""
    config = {
        "teachers": [{"name": "probed", "releases": [str(r) for r in releases]}],
        "seeds": 2,
        "student": {"arch": "resnet10t", "img_size": 32},
        "loss": {"alpha": 0.5, "temperature": 2.0},
        "data": {"mix_ratio": 0.5, "batch_size": 16, "workers": 0, "shuffle_buffer": 16},
        "optim": {"name": "adamw", "lr": 0.003, "steps": 4, "warmup_epochs": 0.1},
        "runtime": {"device": "cpu", "seed": 0, "checkpoint_every": 2, "log_every": 1},
    }
    config.update(over)
    return config


def write_compare(path: Path, *releases, **over) -> Path:
    path.write_text(yaml.safe_dump(compare_dict(*releases, **over)))
    return path


# tiny segmentation students: a 1-block DINOv2-shaped ViT (patch 14) with the linear head, and smp FPN on resnet10t
SEG_STUDENTS = {
    "vit-linear": {"arch": "vit_small_patch14_dinov2", "img_size": 28, "decoder": "linear",
                   "model_kwargs": {"img_size": 28, "depth": 1, "embed_dim": 48, "num_heads": 2}},
    "smp-fpn": {"arch": "resnet10t", "img_size": 32, "decoder": "FPN",
                "model_kwargs": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 64}},  # 2 channels a group
}


def seg_config_dict(release_path, student: str = "vit-linear", **sections) -> dict:
    """A small, fast segmentation config on `release_path` (a `write_seg_release`)."""
    config = config_dict(release_path, student=SEG_STUDENTS[student], **sections)
    config["task"] = "segmentation"
    return config


def write_seg_config(path: Path, release_path, student: str = "vit-linear", **sections) -> Path:
    path.write_text(yaml.safe_dump(seg_config_dict(release_path, student, **sections)))
    return path

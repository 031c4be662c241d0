"""Checkpoints: written atomically, listed oldest first, and what a resumed run restores from them.

A checkpoint is a folder `checkpoints/step-N/` holding model.safetensors (+ projector.safetensors)
and state.pt (optimizer, every process's RNG states and log window, the schedule; loaded with
`torch.load(weights_only=True)`). It is complete once renamed from its temporary name.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.contract.configlib import ConfigError

from .students import Distillable

CHECKPOINTS = "checkpoints"
MODEL = "model.safetensors"
PROJECTOR = "projector.safetensors"
STATE = "state.pt"
KEEP_CHECKPOINTS = 2


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder is complete once renamed from its temp name)."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(out: Path, step: int, net: Distillable, state: dict) -> Path:
    """Write checkpoints/step-N atomically: files into a temp folder, fsync, then one rename."""
    root = out / CHECKPOINTS
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp-{os.getpid()}"
    for stale in root.glob(".step-*"):  # left by a killed run (only rank 0 writes here)
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_cpu_state(net.student), str(tmp / MODEL))
    if net.projector is not None:
        save_file(_cpu_state(net.projector), str(tmp / PROJECTOR))
    torch.save(state, tmp / STATE)
    for f in tmp.iterdir():
        _fsync(f)
    if final.exists():  # the same step written before an interruption: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in checkpoint_dirs(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, net: Distillable, optimizer: torch.optim.Optimizer) -> dict:
    net.student.load_state_dict(load_file(str(path / MODEL)))
    if net.projector is not None:
        net.projector.load_state_dict(load_file(str(path / PROJECTOR)))
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return state


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Resumed:
    """Where a run starts: step 0, or what its latest checkpoint holds for this process."""
    step: int = 0
    skipped: int = 0                 # corrupt samples skipped so far (this process)
    rng: dict | None = None          # this process's RNG states, when the world size is unchanged
    window: torch.Tensor | None = None   # the log window's running sums and step count
    window_steps: int = 0
    checkpoint: Path | None = None


def resume(out: Path, net: Distillable, optimizer: torch.optim.Optimizer, procs, steps_per_epoch: int,
           workers: int) -> Resumed:
    """Load the latest checkpoint of `out` into `net` and `optimizer` (nothing when there is none)."""
    found = checkpoint_dirs(out)
    if not found:
        if procs.main:
            print(f"note: --resume: no checkpoint in {out / CHECKPOINTS}; starting from scratch", file=sys.stderr)
        return Resumed()
    latest = found[-1]
    state = load_checkpoint(latest, net, optimizer)
    if state["steps_per_epoch"] != steps_per_epoch:
        raise ConfigError(f"{latest}: written with {state['steps_per_epoch']} steps per epoch, this config "
                          f"makes {steps_per_epoch} (data.batch_size or the releases changed); start a new run folder")
    ranks = state["ranks"]
    if state["workers"] != workers and procs.main:
        print(f"warning: checkpoint written with data.workers {state['workers']}, resuming with "
              f"{workers}: batches are drawn in another order from here on", file=sys.stderr)
    if len(ranks) == procs.world:
        mine = ranks[procs.rank]
        return Resumed(state["step"], mine["skipped"], mine["rng"], mine["log_window"]["sums"],
                       mine["log_window"]["steps"], latest)
    if procs.main:
        print(f"warning: checkpoint from {len(ranks)} processes, resuming on {procs.world}: RNG "
              "streams are reseeded, the run is no longer bitwise reproducible", file=sys.stderr)
    skipped = sum(r["skipped"] for r in ranks) if procs.main else 0
    return Resumed(state["step"], skipped, checkpoint=latest)

"""Checkpoints: written atomically, verified on load, listed oldest first, and what a resumed run
restores from them.

A checkpoint is a folder `checkpoints/step-N/` holding model.safetensors (+ projector.safetensors),
state.pt (optimizer, every process's RNG states and log window, the schedule; loaded with
`torch.load(weights_only=True)`) and checksums.json (the sha256 of each, recorded at save). It is
complete once renamed from its temporary name. A resume verifies the checksums before loading: a
corrupt latest checkpoint is one warning naming it (it is moved aside to `corrupt-step-N`), and the
run resumes from the one before.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from pipeline.contract.configlib import ConfigError
from pipeline.contract.errors import UserError, first_line, short_error
from pipeline.contract.ids import sha256_bytes, sha256_file
from pipeline.contract.logs import get_logger

from .runfiles import CHECKPOINTS
from .samples import add_counts
from .students import Distillable

log = get_logger(__name__)

MODEL = "model.safetensors"
PROJECTOR = "projector.safetensors"
STATE = "state.pt"
CHECKSUMS = "checksums.json"
KEEP_CHECKPOINTS = 2
_STEP = re.compile(r"step-(\d+)")


class CorruptCheckpoint(UserError):
    """A checkpoint that fails its checksums or cannot be loaded: '<folder>: <what>'."""


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder is complete once renamed from its temp name)."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def checkpoint_path(out: Path, step: int) -> Path:
    return out / CHECKPOINTS / f"step-{step:08d}"


def save_checkpoint(out: Path, step: int, net: Distillable, state: dict) -> Path:
    """Write checkpoints/step-N atomically: files and their checksums into a temp folder, fsync,
    then one rename."""
    root = out / CHECKPOINTS
    final = checkpoint_path(out, step)
    tmp = root / f".step-{step:08d}.tmp-{os.getpid()}"
    for stale in root.glob(".step-*"):  # left by a killed run (only rank 0 writes here)
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {MODEL: save(_cpu_state(net.student))}
    if net.projector is not None:
        files[PROJECTOR] = save(_cpu_state(net.projector))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files[STATE] = buffer.getvalue()
    for name, data in files.items():
        _write(tmp / name, data)
    sums = {name: sha256_bytes(data) for name, data in sorted(files.items())}   # checked on load
    _write(tmp / CHECKSUMS, (json.dumps(sums, indent=1, sort_keys=True) + "\n").encode())
    if final.exists():  # the same step written before an interruption: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    prune(out, KEEP_CHECKPOINTS)
    return final


def prune(out: Path, keep: int) -> None:
    """Delete all but the latest `keep` checkpoints of `out`."""
    for old in checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def training_state(step: int, steps_per_epoch: int, total_steps: int, warmup_steps: int, peak_lr: float,
                   optimizer: torch.optim.Optimizer, ranks: list, world: int, workers: int, seed: int) -> dict:
    """A checkpoint's state.pt: where the run is, the optimizer, the schedule, and what differs
    between ranks (`ranks`: each one's RNG streams, skip counts and log window)."""
    spe = steps_per_epoch
    return {"step": step, "epoch": step // spe, "batch_in_epoch": step % spe, "steps_per_epoch": spe,
            "total_steps": total_steps, "optimizer": optimizer.state_dict(),
            "schedule": {"name": "warmup-cosine", "warmup_steps": warmup_steps, "peak_lr": peak_lr,
                         "total_steps": total_steps},
            "ranks": ranks, "world": world, "workers": workers, "seed": seed}


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:   # a plain open: the usual file mode (safetensors' save_file makes 0600)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with checkpoint folder `path` ('<path>: …'), or None when its files match the
    checksums recorded at save (a checkpoint without checksums.json, from before they were
    recorded, is only checked when loaded)."""
    names = [MODEL, STATE]
    sums_path = path / CHECKSUMS
    if sums_path.is_file():
        try:
            sums = json.loads(sums_path.read_text())
            names = sorted(sums)
        except (OSError, ValueError):
            return f"{path}: unreadable {CHECKSUMS}"
        if MODEL not in sums or STATE not in sums:
            return f"{path}: {CHECKSUMS} does not list {MODEL} and {STATE}"
    else:
        sums = None
    for name in names:
        f = path / name
        if not f.is_file():
            return f"{path}: {name} is missing"
        if sums is not None and sha256_file(f) != sums[name]:
            return f"{path}: {name} does not match its checksum (truncated or damaged)"
    return None


def load_checkpoint(path: Path, net: Distillable, optimizer: torch.optim.Optimizer) -> dict:
    """Load a checkpoint into `net` and `optimizer`; CorruptCheckpoint naming it when it cannot be."""
    problem = checkpoint_problem(path)
    if problem:
        raise CorruptCheckpoint(problem)
    try:
        student = load_file(str(path / MODEL))
        projector = load_file(str(path / PROJECTOR)) if net.projector is not None else None
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - safetensors, zip and unpickler errors of a damaged file
        raise CorruptCheckpoint(f"{path}: cannot be loaded ({short_error(e)})") from None
    try:
        net.student.load_state_dict(student)
        if projector is not None:
            net.projector.load_state_dict(projector)
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise ConfigError(f"{path}: does not fit this config's student or optimizer "
                          f"({first_line(e)}); start a new run folder") from None
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
    skipped_shards: dict = field(default_factory=dict)   # the same, per shard url
    rng: dict | None = None          # this process's RNG states, when the world size is unchanged
    window: torch.Tensor | None = None   # the log window's running sums and step count
    window_steps: int = 0
    checkpoint: Path | None = None


def resume(out: Path, net: Distillable, optimizer: torch.optim.Optimizer, procs, steps_per_epoch: int,
           workers: int) -> Resumed:
    """Load the latest sound checkpoint of `out` into `net` and `optimizer` (nothing when there is
    none); a corrupt one is named, moved aside, and the one before it is used."""
    found = checkpoint_dirs(out)
    if not found:
        if procs.main:
            print(f"note: --resume: no checkpoint in {out / CHECKPOINTS}; starting from scratch", file=sys.stderr)
        return Resumed()
    corrupt = []
    for latest in reversed(found):
        try:
            state = load_checkpoint(latest, net, optimizer)
            break
        except CorruptCheckpoint as e:
            corrupt.append((latest, str(e)))
    else:
        more = f" (and {len(corrupt) - 1} older one(s))" if len(corrupt) > 1 else ""
        raise CorruptCheckpoint(f"no readable checkpoint to resume from: {corrupt[0][1]}{more}; start the run "
                                "again with --overwrite")
    if corrupt and procs.main:
        for _, problem in corrupt:
            log.warning(f"corrupt checkpoint: {problem}; using the one before")
        for bad, _ in corrupt:  # out of the listing (kept for inspection): later saves and resumes skip it
            aside = bad.with_name(f"corrupt-{bad.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(bad, aside)
    if state["steps_per_epoch"] != steps_per_epoch:
        raise ConfigError(f"{latest}: written with {state['steps_per_epoch']} steps per epoch, this config "
                          f"makes {steps_per_epoch} (data.batch_size or the releases changed); start a new run folder")
    if procs.main:
        print(f"resuming from step {state['step']} of {state['total_steps']} ({latest})", file=sys.stderr, flush=True)
    ranks = state["ranks"]
    if state["workers"] != workers and procs.main:
        log.warning(f"checkpoint written with data.workers {state['workers']}, resuming with "
                    f"{workers}: batches are drawn in another order from here on")
    if len(ranks) == procs.world:
        mine = ranks[procs.rank]
        return Resumed(state["step"], mine["skipped"], mine.get("skipped_shards", {}), mine["rng"],
                       mine["log_window"]["sums"], mine["log_window"]["steps"], latest)
    if procs.main:
        log.warning(f"checkpoint from {len(ranks)} processes, resuming on {procs.world}: RNG "
                    "streams are reseeded, the run is no longer bitwise reproducible")
    skipped, by_shard = 0, {}
    if procs.main:  # rank 0 carries the tally of the processes that are gone
        for r in ranks:
            skipped += r["skipped"]
            add_counts(by_shard, r.get("skipped_shards", {}))
    return Resumed(state["step"], skipped, by_shard, checkpoint=latest)

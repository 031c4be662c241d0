"""The training loop: releases → student, with no teacher in the process.

One process per device; under torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the
processes form a DDP group (nccl on CUDA, gloo on CPU) and each reads its own share of the shards.

Exact resume. Everything a step depends on is either checkpointed or a pure function of the step:
- model weights (safetensors), optimizer state, every process's RNG states, the log window;
- the learning rate: linear warmup then cosine, a function of the step (no scheduler object);
- the data: the batches of epoch e are a pure function of (seed, e) for a given number of ranks
  and DataLoader workers (see trainer.data), so the data position is the step itself: epoch = step // steps_per_epoch, batch = step % steps_per_epoch.
`--resume` loads the latest checkpoint, restarts that epoch's streams and skips the batches already
trained on (not decoded when on_corrupt is 'error'), and truncates log.jsonl to the checkpoint.
On CPU the resumed run's per-step losses are then bitwise those of an uninterrupted run.

Outputs (OUT = the run folder): log.jsonl, tb/ (TensorBoard), config.yaml, checkpoints/step-N/
{model.safetensors, projector.safetensors, state.pt}, and at the end metrics.json,
student.safetensors and student.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from pipeline.configlib import ConfigError, dump, parse_overrides, to_dict

from .config import TrainConfig, check_releases, load_config
from .data import batches, model_inputs, train_loader, train_plan
from .device import autocast, resolve_device
from .evaluate import evaluate
from .losses import distill_loss, feature_loss
from .release import ReleaseSet
from .samples import Replay
from .students import Distillable, build_student, mean_std, save_student

LOG = "log.jsonl"
CHECKPOINTS = "checkpoints"
MODEL = "model.safetensors"
PROJECTOR = "projector.safetensors"
STATE = "state.pt"
METRICS = "metrics.json"
KEEP_CHECKPOINTS = 2


# -- schedule and optimizer ---------------------------------------------------------------------
def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """LR of update `step` (0-based): linear warmup to `peak`, then cosine decay to 0."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(net: torch.nn.Module, optim) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on biases and normalisation weights (the 1-d tensors)."""
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)


def train_step(model, optimizer, x: torch.Tensor, batch: dict, device, *, alpha: float, temperature: float,
               feature_weight: float, precision: str, clip_grad: float) -> torch.Tensor:
    """One update; returns [loss, ce, kd, feat] (detached, on the device: no host sync here)."""
    teacher = batch["logits"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    is_real = batch["is_real"].to(device, non_blocking=True)
    with autocast(device, precision):
        logits, projected = model(x)
    loss, ce, kd = distill_loss(logits, teacher, labels, is_real, alpha, temperature)
    if projected is not None:
        feat = feature_loss(projected, batch["features"].to(device, non_blocking=True))
        loss = loss + feature_weight * feat
    else:
        feat = torch.zeros((), device=device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    return torch.stack([loss, ce, kd, feat]).detach()


# -- processes and RNG --------------------------------------------------------------------------
class Processes:
    """This process's place in the run: rank, world size, device (torchrun's environment)."""

    def __init__(self, device_name: str):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", 0)))
        if self.world > 1:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            values = values.clone()
            dist.all_reduce(values)
        return values

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """torch, CUDA, numpy and python RNG states as tensors and primitives (weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(state), "gauss_next": gauss_next}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# -- checkpoints --------------------------------------------------------------------------------
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


# -- logs ---------------------------------------------------------------------------------------
class RunLog:
    """log.jsonl, TensorBoard and a tqdm bar, written by rank 0 only."""

    def __init__(self, out: Path, start_step: int, total_steps: int, enabled: bool):
        self.enabled = enabled
        self.path = out / LOG
        self.tb = None
        self.bar = None
        if not enabled:
            return
        self._truncate(start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter  # lazily: tensorboard is optional
            self.tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1)
        except ImportError as e:
            print(f"warning: TensorBoard logging is off ({e})", file=sys.stderr)
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=1.0)

    def _truncate(self, step: int) -> None:
        """Keep the entries up to `step` (a resumed run rewrites what followed its checkpoint)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _logged_step(line) <= step]
        tmp = self.path.with_name(f".{LOG}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def record(self, entry: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.tb is not None:
            for key, value in entry.items():
                if key not in ("step", "epoch"):
                    self.tb.add_scalar(f"train/{key}", value, entry["step"])
        self.bar.set_postfix(loss=f"{entry['loss']:.4f}", img_s=f"{entry['images_per_s']:.0f}")

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _logged_step(line: str) -> float:
    """The step of a log line; a line cut short by a kill counts as after any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


# -- the run ------------------------------------------------------------------------------------
def run(config: TrainConfig, out_dir, resume: bool = False, releases: ReleaseSet | None = None) -> dict:
    """Train a student as configured into `out_dir`; returns the metrics (also in metrics.json)."""
    releases = releases if releases is not None else check_releases(config)
    procs = Processes(config.runtime.device)
    try:
        metrics = _train(config, releases, Path(out_dir), resume, procs)
        procs.barrier()  # on success only: after a failure torchrun stops the other ranks
        return metrics
    finally:
        procs.close()


def _train(config: TrainConfig, releases: ReleaseSet, out: Path, resume: bool, procs: Processes) -> dict:
    rt, optim, loss_cfg = config.runtime, config.optim, config.loss
    device = procs.device
    cuda = device.type == "cuda"
    seed_everything(rt.seed + procs.rank)

    # the data plan first: its errors (shards per reader, batch split) come before any model loads
    feature_dim = releases.feature_dim() if loss_cfg.feature_weight > 0 else None
    if rt.gpu_decode and not cuda and procs.main:
        print("warning: runtime.gpu_decode needs CUDA; decoding on the CPU", file=sys.stderr)
    replay = Replay(releases.num_classes, config.student.img_size, rt.seed, feature_dim,
                    rt.gpu_decode and cuda, config.data.on_corrupt)
    plan = train_plan(releases, config, procs.world, replay)

    student = build_student(config.student.arch, releases.num_classes, config.student.weights,
                            config.student.drop_path, config.student.model_kwargs, config.student.img_size)
    mean, std = mean_std(student)
    net = Distillable(student, feature_dim).to(device)
    channels_last = cuda and rt.channels_last
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(net, optim)

    spe = plan.steps_per_epoch
    total_steps = spe * optim.epochs
    warmup_steps = round(optim.warmup_epochs * spe)
    alpha = 0.0 if loss_cfg.mode == "finetune" else loss_cfg.alpha

    step, skipped = 0, 0
    window, window_steps = torch.zeros(4, dtype=torch.float64, device=device), 0
    restored_rng = None
    latest = checkpoint_dirs(out)[-1] if resume and checkpoint_dirs(out) else None
    if resume and latest is None and procs.main:
        print(f"note: --resume: no checkpoint in {out / CHECKPOINTS}; starting from scratch", file=sys.stderr)
    if latest is not None:
        state = load_checkpoint(latest, net, optimizer)
        if state["steps_per_epoch"] != spe:
            raise ConfigError(f"{latest}: written with {state['steps_per_epoch']} steps per epoch, this config "
                              f"makes {spe} (data.batch_size or the releases changed); start a new run folder")
        step, ranks = state["step"], state["ranks"]
        if state["workers"] != plan.workers and procs.main:
            print(f"warning: checkpoint written with data.workers {state['workers']}, resuming with "
                  f"{plan.workers}: batches are drawn in another order from here on", file=sys.stderr)
        if len(ranks) == procs.world:
            mine = ranks[procs.rank]
            skipped, restored_rng = mine["skipped"], mine["rng"]
            window, window_steps = mine["log_window"]["sums"].to(device), mine["log_window"]["steps"]
        else:
            skipped = sum(r["skipped"] for r in ranks) if procs.main else 0
            if procs.main:
                print(f"warning: checkpoint from {len(ranks)} processes, resuming on {procs.world}: RNG "
                      "streams are reseeded, the run is no longer bitwise reproducible", file=sys.stderr)
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
        dump(config, out / "config.yaml")
    log = RunLog(out, step, total_steps, procs.main)

    model = net
    if procs.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
    if rt.compile:
        model = torch.compile(model)
    if restored_rng is not None:
        set_rng_state(restored_rng)  # last, after everything that draws random numbers while building
    elif latest is not None:
        seed_everything(rt.seed + procs.rank + step)

    steps_this_run, train_seconds = 0, 0.0
    window_start = time.perf_counter()
    while step < total_steps:
        epoch, done = divmod(step, spe)
        stream = batches(train_loader(plan, epoch, skip=done, pin_memory=cuda))
        started = time.perf_counter()
        for index, batch in zip(range(spe), stream):
            if index < done:
                continue  # trained on before the resume point
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, warmup_steps, optim.lr)
            x = model_inputs(batch, device, config.student.img_size, mean, std, channels_last)
            losses = train_step(model, optimizer, x, batch, device, alpha=alpha, temperature=loss_cfg.temperature,
                                feature_weight=loss_cfg.feature_weight, precision=rt.precision,
                                clip_grad=optim.clip_grad)
            step += 1
            steps_this_run += 1
            skipped += batch["skipped"]
            window += losses
            window_steps += 1
            log.step()
            if step % rt.log_every == 0 or step == total_steps:
                means = (procs.sum(window / window_steps) / procs.world).tolist()
                n_skipped = int(procs.sum(torch.tensor([skipped], device=device)).item())
                elapsed = time.perf_counter() - window_start
                entry = {"step": step, "epoch": epoch, "loss": means[0], "ce": means[1], "kd": means[2]}
                if feature_dim:
                    entry["feat"] = means[3]
                entry.update(lr=optimizer.param_groups[0]["lr"],
                             images_per_s=window_steps * config.data.batch_size / max(elapsed, 1e-9),
                             skipped=n_skipped)
                log.record(entry)
                window.zero_()
                window_steps = 0
                window_start = time.perf_counter()
            if rt.checkpoint_every and step % rt.checkpoint_every == 0 or step == total_steps:
                # what differs between ranks is gathered: RNG streams, skip counts, the log window
                ranks = procs.gather({"rng": rng_state(), "skipped": skipped,
                                      "log_window": {"sums": window.cpu(), "steps": window_steps}})
                state = {"step": step, "epoch": step // spe, "batch_in_epoch": step % spe, "steps_per_epoch": spe,
                         "total_steps": total_steps, "optimizer": optimizer.state_dict(),
                         "schedule": {"name": "warmup-cosine", "warmup_steps": warmup_steps, "peak_lr": optim.lr,
                                      "total_steps": total_steps},
                         "ranks": ranks, "world": procs.world, "workers": plan.workers, "seed": rt.seed}
                if procs.main:
                    save_checkpoint(out, step, net, state)
        stream.close()  # shuts the epoch's DataLoader workers down
        train_seconds += time.perf_counter() - started

    val = evaluate(net.student, releases, config.student.img_size, mean, std,
                   batch_size=max(1, config.data.batch_size // procs.world), workers=config.data.workers,
                   device=device, precision=rt.precision, channels_last=channels_last,
                   on_corrupt=config.data.on_corrupt, rank=procs.rank, world=procs.world)
    metrics = {"val": val,
               "train": {"steps": total_steps, "epochs": optim.epochs, "steps_per_epoch": spe,
                         "global_batch": config.data.batch_size, "mode": loss_cfg.mode, "skipped": skipped,
                         "steps_this_run": steps_this_run, "seconds_this_run": round(train_seconds, 3),
                         "world": procs.world},
               "student": {"arch": config.student.arch, "img_size": config.student.img_size},
               "releases": [r.root for r in releases]}
    if procs.main:
        log.scalars("val", val, total_steps)
        (out / METRICS).write_text(json.dumps(metrics, indent=1))
        save_student(net.student, out, {"arch": config.student.arch, "num_classes": releases.num_classes,
                                        "img_size": config.student.img_size, "mean": mean, "std": std,
                                        "classes": releases.classes,
                                        "model_kwargs": config.student.model_kwargs,
                                        "config": to_dict(config)})
    log.close()
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config (YAML)")
    parser.add_argument("--out", required=True, help="run folder: logs, checkpoints, the student")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=0.001 (repeatable)")


def main(args: argparse.Namespace) -> int:
    """`tsd train CONFIG --out DIR [--resume] [--set key=value ...]` (under torchrun for DDP)."""
    config, releases = load_config(args.config, parse_overrides(args.set))
    metrics = run(config, args.out, args.resume, releases)
    train, val = metrics["train"], metrics["val"]
    if train["world"] > 1:
        print(f"[rank {os.environ.get('RANK', 0)}/{train['world']}] done: {train['steps_this_run']} steps "
              f"this run, {train['steps']} in all", flush=True)
    if os.environ.get("RANK", "0") == "0":
        print(f"trained {config.student.arch} for {train['steps']} steps ({train['mode']}): val top1 "
              f"{val['top1']:.4f}, agreement with the teacher {val['agreement']:.4f} → {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=main.__doc__)
    add_arguments(parser)
    main(parser.parse_args())

"""The training loop: releases → student, with no teacher in the process.

Exact resume. Everything a step depends on is either checkpointed or a pure function of the step:
- model weights (safetensors), optimizer state, every process's RNG states, the log window;
- the learning rate: linear warmup then cosine, a function of the step (no scheduler object);
- the data: the batches of epoch e are a pure function of (seed, e) for a given number of ranks
  and DataLoader workers (see trainer.data), so the data position is the step itself: epoch =
  step // steps_per_epoch, batch = step % steps_per_epoch.
A resumed run loads the latest checkpoint, restarts that epoch's streams and skips the batches
already trained on (not decoded when on_corrupt is 'error'), and truncates log.jsonl to the
checkpoint. On CPU the resumed run's per-step losses are then bitwise those of an uninterrupted run.
When checkpoints are written, and how SIGTERM/SIGINT stop a run with one: `trainer.stopping`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipeline.contract.configlib import ConfigError, dump, to_dict
from pipeline.contract.device import autocast
from pipeline.contract.logs import get_logger
from pipeline.contract.tasks import SEGMENTATION

from .checkpoints import Resumed, checkpoint_path, prune, resume, save_checkpoint, training_state
from .config import TrainConfig
from .data import TrainPlan, batches, model_inputs, train_loader, train_plan
from .evaluate import evaluate
from .losses import distill_loss, feature_loss, seg_distill_loss
from .processes import Processes, rng_state, seed_everything, set_rng_state
from .release import ReleaseSet
from .runfiles import CONFIG, METRICS
from .runlog import LossWindow, RunLog
from .samples import Replay, add_counts
from .stopping import Cadence, Stopped, StopSignals
from .students import (STUDENT_INFO, STUDENT_WEIGHTS, Distillable, build_seg_student, build_student, init_weights,
                       mean_std, preprocessing, release_eval_crop, save_student)
from .trackers import open_run_trackers

log = get_logger(__name__)



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
    is_real = batch["is_real"].to(device, non_blocking=True)
    with autocast(device, precision):
        logits, projected = model(x)
    if "mask" in batch:   # segmentation: dense teacher logits and the view's mask
        loss, ce, kd = seg_distill_loss(logits, batch["teacher"].to(device, non_blocking=True),
                                        batch["mask"].to(device, non_blocking=True), is_real, alpha, temperature)
    else:
        loss, ce, kd = distill_loss(logits, batch["logits"].to(device, non_blocking=True),
                                    batch["label"].to(device, non_blocking=True), is_real, alpha, temperature)
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


@dataclass
class Setup:
    """What a run trains: the data plan, the student (and projector), the optimizer, the schedule."""
    plan: TrainPlan
    net: Distillable
    optimizer: torch.optim.Optimizer
    mean: list
    std: list
    feature_dim: int | None
    channels_last: bool
    total_steps: int
    warmup_steps: int
    alpha: float


def setup(config: TrainConfig, releases: ReleaseSet, procs: Processes) -> Setup:
    """The data plan first (its errors come before any model loads), then the student."""
    rt, optim, loss_cfg = config.runtime, config.optim, config.loss
    cuda = procs.device.type == "cuda"
    feature_dim = releases.feature_dim() if loss_cfg.feature_weight > 0 else None
    if rt.gpu_decode and not cuda and procs.main:
        log.warning("runtime.gpu_decode needs CUDA; decoding on the CPU")
    replay = Replay(releases.num_classes, config.student.img_size, rt.seed, feature_dim,
                    rt.gpu_decode and cuda, config.data.on_corrupt, config.task)
    plan = train_plan(releases, config, procs.world, replay)

    st = config.student
    if config.task == SEGMENTATION:
        student = build_seg_student(st.arch, releases.num_classes, st.decoder, st.weights, st.drop_path,
                                    st.model_kwargs, st.img_size, st.weights_sha256)
    else:
        student = build_student(st.arch, releases.num_classes, st.weights, st.drop_path, st.model_kwargs,
                                st.img_size, st.weights_sha256)
    mean, std = mean_std(student)
    net = Distillable(student, feature_dim).to(procs.device)
    channels_last = cuda and rt.channels_last
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(net, optim)
    spe = plan.steps_per_epoch
    total_steps, warmup_steps = budget_steps(optim, spe)
    return Setup(plan, net, optimizer, mean, std, feature_dim, channels_last, total_steps=total_steps,
                 warmup_steps=warmup_steps, alpha=0.0 if loss_cfg.mode == "finetune" else loss_cfg.alpha)


def seg_info(config: TrainConfig) -> dict:
    """student.json's segmentation keys: the task and the decoder (what `load_student` rebuilds)."""
    if config.task != SEGMENTATION:
        return {}
    return {"task": SEGMENTATION, "decoder": config.student.decoder or "linear"}


def budget_steps(optim, steps_per_epoch: int) -> tuple[int, int]:
    """(total, warmup) optimizer steps: `optim.steps` when set, else `optim.epochs` passes over the
    real set; warmup in epochs of the real set either way."""
    total = optim.total_steps(steps_per_epoch)
    warmup = round(optim.warmup_epochs * steps_per_epoch)
    if warmup > total:
        raise ConfigError(f"optim.warmup_epochs: {optim.warmup_epochs} epochs are {warmup} steps, more than the "
                          f"{total} of optim.steps")
    return total, warmup


def run_budget(plan: TrainPlan, steps: int, world: int) -> dict:
    """The budget a run spends, stated in its metrics: steps and the real and mix images they read."""
    return {"steps": steps, "real_images": steps * plan.n_real * world, "mix_images": steps * plan.n_mix * world}


def validate(config: TrainConfig, s: Setup, releases: ReleaseSet, procs: Processes) -> dict:
    """The student on the val shards (every rank its share). The RNG states are restored afterwards:
    the val loader draws its workers' seeds from them, and training must not see that."""
    state = rng_state()
    try:
        return evaluate(s.net.student, releases, config.student.img_size, s.mean, s.std,
                        batch_size=max(1, config.data.batch_size // procs.world), workers=config.data.workers,
                        device=procs.device, precision=config.runtime.precision, channels_last=s.channels_last,
                        on_corrupt=config.data.on_corrupt, rank=procs.rank, world=procs.world, task=config.task)
    finally:
        set_rng_state(state)


def val_entry(step: int, s: Setup, config: TrainConfig, val: dict) -> dict:
    """A line of val.jsonl: where in training (step, epochs, images seen) and the metrics."""
    return {"step": step, "epoch": step / s.plan.steps_per_epoch, "images_seen": step * config.data.batch_size,
            **{k: v for k, v in val.items() if k != "predictions"}}


def train(config: TrainConfig, releases: ReleaseSet, out: Path, resume_run: bool, procs: Processes) -> dict:
    """Train into the run folder `out` (continuing its latest checkpoint with `resume_run`); returns
    the metrics."""
    rt = config.runtime
    device = procs.device
    seed_everything(rt.seed + procs.rank)
    s = setup(config, releases, procs)
    start = resume(out, s.net, s.optimizer, procs, s.plan.steps_per_epoch, s.plan.workers) if resume_run \
        else Resumed()
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
        dump(config, out / CONFIG)
    log = RunLog(out, start.step, s.total_steps, procs.main, open_run_trackers(config, out, start.step, procs.main),
                 tensorboard="tensorboard" in rt.loggers)

    model = s.net
    if procs.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(s.net, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    if rt.compile:
        model = torch.compile(model)
    if start.rng is not None:
        set_rng_state(start.rng)  # last, after everything that draws random numbers while building
    elif start.checkpoint is not None:
        seed_everything(rt.seed + procs.rank + start.step)

    try:
        with StopSignals() as stop:
            progress = run_steps(config, s, model, start, out, log, procs, releases, stop)
    except Stopped:
        log.close()
        raise
    return finish(config, releases, s, progress, out, log, procs)


@dataclass(frozen=True)
class StepsDone:
    """What `run_steps` did, for metrics.json's `train`."""
    skipped: int                 # corrupt samples skipped over the whole run, every rank
    skipped_shards: dict         # the same, per shard
    steps_this_run: int          # since this process started (a resumed run: since the resume)
    seconds_this_run: float      # training time of those steps (validations left out)

    def to_json(self) -> dict:
        return asdict(self)


def run_steps(config: TrainConfig, s: Setup, model, start: Resumed, out: Path, log: RunLog,
              procs: Processes, releases: ReleaseSet, stop: StopSignals) -> StepsDone:
    """Every optimizer step from `start.step` to the end, logging, validating every
    `runtime.eval_every` epochs (before that step's checkpoint, so a resume from it never misses a
    validation) and checkpointing on the way; raises `Stopped` after the checkpoint that a
    SIGTERM/SIGINT asked for. The last validation is `finish`'s."""
    rt, optim, loss_cfg = config.runtime, config.optim, config.loss
    device, spe = procs.device, s.plan.steps_per_epoch
    step, skipped, skipped_shards = start.step, start.skipped, dict(start.skipped_shards)
    cadence = Cadence(rt, spe, s.total_steps)
    stopped = None
    window = LossWindow(start.window, start.window_steps, device)
    steps_this_run, train_seconds = 0, 0.0
    # one loader for the whole run: its workers start once, not once per epoch
    stream = batches(train_loader(s.plan, step, s.total_steps, pin_memory=device.type == "cuda"))
    while step < s.total_steps and stopped is None:
        epoch, done = divmod(step, spe)
        started = time.perf_counter()
        # the last epoch is cut short when the budget (optim.steps) ends inside it
        for _, batch in zip(range(done, min(spe, s.total_steps - epoch * spe)), stream):
            for group in s.optimizer.param_groups:
                group["lr"] = learning_rate(step, s.total_steps, s.warmup_steps, optim.lr)
            x = model_inputs(batch, device, config.student.img_size, s.mean, s.std, s.channels_last)
            losses = train_step(model, s.optimizer, x, batch, device, alpha=s.alpha,
                                temperature=loss_cfg.temperature, feature_weight=loss_cfg.feature_weight,
                                precision=rt.precision, clip_grad=optim.clip_grad)
            step += 1
            steps_this_run += 1
            skipped += batch["skipped"]
            add_counts(skipped_shards, batch["skipped_shards"])
            window.add(losses)
            log.step()
            if step % rt.log_every == 0 or step == s.total_steps:
                log.record(window.entry(procs, step, epoch, s.optimizer.param_groups[0]["lr"], config.data.batch_size,
                                        skipped, bool(s.feature_dim)))
            if rt.eval_every and step % (rt.eval_every * spe) == 0 and step < s.total_steps:
                paused = time.perf_counter()
                log.record_val(val_entry(step, s, config, validate(config, s, releases, procs)))
                paused = time.perf_counter() - paused   # not training time: out of the speed figures
                window.pause(paused)
                started += paused
            # one decision for every rank: any rank's signal, rank 0's clock
            signum, clock = procs.agree([stop.requested or 0, int(procs.main and cadence.clock_due())])
            if cadence.due(step) or clock or signum:
                # what differs between ranks is gathered: RNG streams, skip counts, the log window
                ranks = procs.gather({"rng": rng_state(), "skipped": skipped, "skipped_shards": skipped_shards,
                                      "log_window": window.state()})
                if procs.main:
                    save_checkpoint(out, step, s.net, training_state(step, spe, s.total_steps, s.warmup_steps,
                                                                     optim.lr, s.optimizer, ranks, procs.world,
                                                                     s.plan.workers, rt.seed))
                cadence.saved()
            if signum:
                stopped = Stopped(signum, step, checkpoint_path(out, step))
                break
        train_seconds += time.perf_counter() - started
    stream.close()  # shuts the DataLoader workers down
    if stopped is not None:
        raise stopped
    # the run's corrupt-data tally: samples lost, over every rank, and per shard
    total = int(procs.sum(torch.tensor([skipped], device=device)).item())
    by_shard: dict = {}
    for part in procs.gather(skipped_shards):
        add_counts(by_shard, part)
    return StepsDone(skipped=total, skipped_shards=dict(sorted(by_shard.items())), steps_this_run=steps_this_run,
                     seconds_this_run=round(train_seconds, 3))


def finish(config: TrainConfig, releases: ReleaseSet, s: Setup, progress: StepsDone, out: Path, log: RunLog,
           procs: Processes) -> dict:
    """Evaluate on the val shards; rank 0 writes metrics.json and the student."""
    val = validate(config, s, releases, procs)
    metrics = {"val": val,
               "train": {"steps": s.total_steps, "epochs": round(s.total_steps / s.plan.steps_per_epoch, 4),
                         "steps_per_epoch": s.plan.steps_per_epoch, "global_batch": config.data.batch_size,
                         "mode": config.loss.mode, **progress.to_json(), "world": procs.world,
                         "budget": run_budget(s.plan, s.total_steps, procs.world)},
               "student": {"arch": config.student.arch, "img_size": config.student.img_size, "task": config.task,
                           **({"decoder": config.student.decoder or "linear"} if config.task == SEGMENTATION else {})},
               "releases": [r.root for r in releases]}
    if procs.main:
        log.record_val(val_entry(s.total_steps, s, config, val))
        (out / METRICS).write_text(json.dumps(metrics, indent=1))
        prune(out, config.runtime.keep_checkpoints)   # finished: the student is saved below
        eval_crop = release_eval_crop([r.manifest for r in releases])
        save_student(s.net.student, out, {"arch": config.student.arch, "num_classes": releases.num_classes,
                                          "img_size": config.student.img_size, "mean": s.mean, "std": s.std,
                                          **preprocessing(config.student.img_size, s.mean, s.std, eval_crop),
                                          "classes": releases.classes,
                                          "model_kwargs": config.student.model_kwargs,
                                          **seg_info(config),
                                          "init_weights": init_weights(config.student.weights,
                                                                       config.student.weights_sha256),
                                          "config": to_dict(config)})
        log.final(metrics, [out / METRICS, out / STUDENT_WEIGHTS, out / STUDENT_INFO])
    log.close()
    return metrics

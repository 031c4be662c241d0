"""A run's log: log.jsonl (training), val.jsonl (validation), TensorBoard, the trackers of
`runtime.loggers` (`trainer.trackers`) and the progress line (`contract.progress`), written by rank 0 only."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from pipeline.contract.files import atomic_write
from pipeline.contract.logs import get_logger
from pipeline.contract.progress import Progress

from .runfiles import LOG, TENSORBOARD, VAL_LOG

log = get_logger(__name__)


class LossWindow:
    """The losses summed over the steps since the last log line (every rank its own; a checkpoint
    keeps them, so a resumed run logs the same lines), and the clock of its images/s."""

    def __init__(self, sums: torch.Tensor | None, steps: int, device):
        self.sums = sums.to(device) if sums is not None else torch.zeros(4, dtype=torch.float64, device=device)
        self.steps = steps
        self.started = time.perf_counter()

    def add(self, losses: torch.Tensor) -> None:
        self.sums += losses
        self.steps += 1

    def pause(self, seconds: float) -> None:
        """Time that was not training (a validation): out of the speed figure."""
        self.started += seconds

    def entry(self, procs, step: int, epoch: int, lr: float, batch_size: int, skipped: int,
              features: bool) -> dict:
        """The log line of `step`: the window's mean losses over every rank; then a new window."""
        means = (procs.sum(self.sums / self.steps) / procs.world).tolist()
        n_skipped = int(procs.sum(torch.tensor([skipped], device=procs.device)).item())
        elapsed = time.perf_counter() - self.started
        entry = {"step": step, "epoch": epoch, "loss": means[0], "ce": means[1], "kd": means[2]}
        if features:
            entry["feat"] = means[3]
        entry.update(lr=lr, images_seen=step * batch_size, images_per_s=self.steps * batch_size / max(elapsed, 1e-9),
                     skipped=n_skipped)
        self.sums.zero_()
        self.steps = 0
        self.started = time.perf_counter()
        return entry

    def state(self) -> dict:
        """What a checkpoint keeps of it."""
        return {"sums": self.sums.cpu(), "steps": self.steps}


def val_headline(val: dict) -> str:
    """A validation in a few words: top-1 (classification) or mIoU and pixel accuracy (segmentation),
    and the agreement with the teacher."""
    score = f"mIoU {val['miou']:.4f}, pixel accuracy {val['pixel_acc']:.4f}" if "miou" in val \
        else f"top-1 {val['top1']:.4f}"
    return f"{score}, agreement with the teacher {val['agreement']:.4f}"


class RunLog:
    """log.jsonl, TensorBoard and a progress line, written by rank 0 only."""

    def __init__(self, out: Path, start_step: int, total_steps: int, enabled: bool, trackers: list | None = None,
                 tensorboard: bool = True):
        """`trackers`: `trainer.trackers.Tracker`s (opened by rank 0 only)."""
        self.enabled = enabled
        self.path = out / LOG
        self.val_path = out / VAL_LOG
        self.tb = None
        self.bar = None
        self.trackers = list(trackers or [])
        if not enabled:
            return
        for path in (self.path, self.val_path):
            self._truncate(path, start_step)
        try:
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter  # lazily: tensorboard is optional
                self.tb = SummaryWriter(str(out / TENSORBOARD), purge_step=start_step + 1)
        except ImportError as e:
            log.warning(f"TensorBoard logging is off ({e})")
        self.bar = Progress("train", total_steps, unit="steps", initial=start_step)

    @staticmethod
    def _truncate(path: Path, step: int) -> None:
        """Keep the entries up to `step` (a resumed run rewrites what followed its checkpoint)."""
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= step]
        atomic_write(path, "".join(line + "\n" for line in kept).encode())

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def record(self, entry: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.scalars("train", {k: v for k, v in entry.items() if k not in ("step", "epoch")}, entry["step"])
        self.bar.set(loss=f"{entry['loss']:.4f}", **{"images/s": f"{entry['images_per_s']:.0f}"})

    def record_val(self, entry: dict) -> None:
        """A validation: a line of val.jsonl and val/* scalars at its step."""
        if not self.enabled:
            return
        with open(self.val_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.scalars("val", {k: v for k, v in entry.items() if k not in ("step", "epoch")}, entry["step"])
        self.say(f"val at epoch {entry['epoch']:.4g} (step {entry['step']}): {val_headline(entry)}")

    def say(self, text: str) -> None:
        """A line of its own on the progress line's stream (above the line redrawn on a terminal)."""
        stream = self.bar.stream
        stream.write(("\r\033[K" if self.bar.tty else "") + text + "\n")
        stream.flush()

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        values = {f"{prefix}/{k}": float(v) for k, v in values.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
        for tracker in self.trackers:
            tracker.scalars(values, step)

    def final(self, metrics: dict, files: list[Path]) -> None:
        """The run's final metrics (numbers of metrics['val']) and its artefacts, to the trackers."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.get("val", {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.final(values, files)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def _logged_step(line: str) -> float:
    """The step of a log line; a line cut short by a kill counts as after any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf

"""When a run checkpoints, and how it stops on a signal without losing its work.

- `Cadence`: a checkpoint every `checkpoint_minutes` of wall clock, at the end of every
  `checkpoint_epochs`-th epoch, every `checkpoint_every` steps (each 0 = off), and at the last step.
  Minutes cover long runs, epochs cover short ones (the demo's 192 steps never reach a step cadence).
- `StopSignals`: SIGTERM (what schedulers and Kubernetes send) and SIGINT (Ctrl-C) set a flag; the
  loop reads it at the next step boundary, writes a checkpoint and raises `Stopped`, so the run
  exits non-zero and `--resume` continues it exactly. A second signal acts at once, as by default.
  DataLoader workers leave both signals to the training process (`defer_stop_signals`), so a
  signal sent to the whole process group stops the run as cleanly as one sent to it alone.
Under DDP the ranks agree on both decisions (rank 0's clock, any rank's signal) before acting,
since writing a checkpoint is collective.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

from pipeline.contract.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Interrupted):
    """The run stopped on a signal after writing a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}", signum)


class StopSignals:
    """SIGTERM/SIGINT → `requested` (a signal number), read at step boundaries (main thread only)."""

    def __init__(self):
        self.requested: int | None = None
        self._pid = os.getpid()
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:      # a forked DataLoader worker: the training process decides
            return
        if self.requested is not None:    # asked twice: stop now
            self.__exit__()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.requested = signum
        print(f"\n{signal.Signals(signum).name}: writing a checkpoint at the end of this step, then stopping "
              "(send it again to stop at once)", file=sys.stderr, flush=True)


def defer_stop_signals(worker_id: int) -> None:
    """A DataLoader worker's `worker_init_fn`: SIGTERM and SIGINT sent to the whole process group
    (Slurm's scancel, `timeout`, Ctrl-C in a terminal) are left to the training process, which
    checkpoints at the step boundary and then shuts its workers down. Without this, torch's worker
    handler dies on SIGTERM and the training process fails before it can checkpoint. The signals are
    blocked and read by a thread: a SIGTERM from the training process itself (the loader's last-resort
    `terminate()`) still ends the worker, as torch's own handler does."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    threading.Thread(target=_exit_on_parent_sigterm, args=(os.getppid(),), name="tsd-worker-signals",
                     daemon=True).start()


def _exit_on_parent_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo(SIGNALS)
        if info.si_signo == signal.SIGTERM and info.si_pid == parent:
            os._exit(0)


class Cadence:
    """Which steps end with a checkpoint (see the module doc)."""

    def __init__(self, runtime, steps_per_epoch: int, total_steps: int):
        self.every = runtime.checkpoint_every
        self.epoch_steps = runtime.checkpoint_epochs * steps_per_epoch
        self.seconds = runtime.checkpoint_minutes * 60.0
        self.total = total_steps
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        """Due by step count, epoch or the end: the same on every rank."""
        return step == self.total or bool(self.every and step % self.every == 0) \
            or bool(self.epoch_steps and step % self.epoch_steps == 0)

    def clock_due(self) -> bool:
        """Due by wall clock (this process's; under DDP rank 0's decides)."""
        return bool(self.seconds) and time.monotonic() - self.last >= self.seconds

    def saved(self) -> None:
        self.last = time.monotonic()

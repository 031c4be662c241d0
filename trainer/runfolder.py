"""A run folder is one run's: a folder holding a run is not trained over by accident, and a lock
keeps a second trainer out while one is running.

- `claim(out, resume, overwrite)`: take the lock, then refuse a folder that already holds a run
  (log, config, checkpoints, student…) unless `--resume` continues it or `--overwrite` replaces it
  (only the run's own files are removed).
- The lock, `RUN/train.lock`, records pid, host and start time. It is stale-safe: a lock whose
  process is gone (same host: the pid is dead or is another process; any host: no heartbeat for
  `STALE_AFTER_S`) is taken over with a note. The holder refreshes its mtime every `HEARTBEAT_S`,
  so a pod rescheduled under a new host name can take over the lock of the one that was killed.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

from pipeline.contract.errors import UserError

from .runfiles import LOCK, RUN_FILES

HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


def run_files(out: Path) -> list[str]:
    """The run artefacts present in `out`."""
    return [name for name in RUN_FILES if (out / name).exists()]


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a reused pid from the lock's holder."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, someone else's
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


class RunLock:
    """`out/train.lock`, held by this process until `release()`."""

    def __init__(self, out: Path):
        self.path = out / LOCK
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                       "process_start": _process_start(os.getpid())}
        self._stop = threading.Event()
        self._acquire()
        self._beat = threading.Thread(target=self._heartbeat, name="tsd-lock-heartbeat", daemon=True)
        self._beat.start()

    def _acquire(self) -> None:
        for _ in range(3):
            if self._create():
                return
            holder = self._holder()
            if holder is None:
                continue          # released between our attempt and the read: try again
            why = self._stale(holder)
            if why is None:
                since = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("started", 0)))
                raise UserError(f"{self.path.parent}: another trainer is running in this folder (pid "
                                f"{holder.get('pid')} on {holder.get('host')}, since {since}); wait for it to end, "
                                f"stop it, or use another --out")
            print(f"note: {self.path}: taking over the lock of pid {holder.get('pid')} on {holder.get('host')} "
                  f"({why})", file=sys.stderr)
            self.path.unlink(missing_ok=True)
        raise UserError(f"{self.path}: cannot take the lock (another trainer keeps taking it)")

    def _create(self) -> bool:
        """Create the lock with its content in one step (a hard link of a complete file)."""
        tmp = self.path.with_name(f".{LOCK}.{os.getpid()}")
        tmp.write_text(json.dumps(self.record) + "\n")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:           # a filesystem without hard links: exclusive create
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.record) + "\n")
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            return holder if isinstance(holder, dict) else {}
        except ValueError:
            return {}

    def _stale(self, holder: dict) -> str | None:
        """Why the lock's holder is gone, or None when it may still be running."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "released"
        if not holder:
            return "unreadable lock file" if age > HEARTBEAT_S else None
        if holder.get("host") == self.record["host"]:
            pid = holder.get("pid")
            if not isinstance(pid, int) or not _alive(pid, holder.get("process_start")):
                return "that process is no longer running"
            return None
        if age > STALE_AFTER_S:
            return f"no heartbeat for {age / 60:.0f} min"
        return None

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        holder = self._holder()
        if holder and holder.get("pid") == self.record["pid"] and holder.get("host") == self.record["host"]:
            self.path.unlink(missing_ok=True)


def claim(out: Path, resume: bool, overwrite: bool) -> RunLock:
    """Lock the run folder `out` for this trainer, and make sure training here is what was asked."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other (continue the run, or replace it)")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out)
    except OSError as e:
        raise UserError(f"{out}: cannot write the run folder ({e.strerror or e})") from None
    try:
        found = run_files(out)
        if found and not (resume or overwrite):
            raise UserError(f"{out}: already holds a run ({', '.join(found)}); use --resume to continue it, "
                            "--overwrite to replace it, or another --out")
        if overwrite:
            for name in found:
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    except BaseException:
        lock.release()
        raise
    return lock

"""The run folder's lock and refusals, in-process (the CLI path is in test_trainer_runs.py):
a live holder is refused, a dead or silent one is taken over, a folder holding a run needs
--resume or --overwrite, and --overwrite removes the run's own files only."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from pipeline.contract.errors import UserError
from trainer import runfolder
from trainer.runfolder import LOCK, RunLock, claim


def _lock_file(folder, pid, host=None, age=0.0):
    path = folder / LOCK
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": time.time() - age,
                                "process_start": runfolder._process_start(pid)}))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_a_live_holder_is_refused_and_a_dead_one_taken_over(tmp_path, capfd):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock_file(tmp_path, sleeper.pid)
        with pytest.raises(UserError, match=f"another trainer is running in this folder \\(pid {sleeper.pid} on "):
            RunLock(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    lock = RunLock(tmp_path)                       # the same pid, now dead: stale
    assert "taking over the lock of pid" in capfd.readouterr().err
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    with pytest.raises(UserError, match="another trainer is running"):
        RunLock(tmp_path)                          # this process holds it: a second claim is refused
    lock.release()
    assert not (tmp_path / LOCK).exists()


def test_a_reused_pid_does_not_hold_the_lock(tmp_path):
    path = _lock_file(tmp_path, os.getpid())
    record = json.loads(path.read_text())
    path.write_text(json.dumps(dict(record, process_start="1")))   # same pid, another process's start time
    RunLock(tmp_path).release()


def test_another_hosts_lock_is_stale_only_without_heartbeat(tmp_path):
    _lock_file(tmp_path, 12345, host="pod-old")
    with pytest.raises(UserError, match="pid 12345 on pod-old"):
        RunLock(tmp_path)
    _lock_file(tmp_path, 12345, host="pod-old", age=runfolder.STALE_AFTER_S + 60)
    RunLock(tmp_path).release()


def test_a_folder_holding_a_run_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    claim(run, resume=False, overwrite=False).release()           # new folder: fine
    (run / "log.jsonl").write_text("{}\n")
    (run / "checkpoints" / "step-00000003").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as err:
        claim(run, resume=False, overwrite=False)
    assert str(err.value) == (f"{run}: already holds a run (log.jsonl, checkpoints); use --resume to continue it, "
                              "--overwrite to replace it, or another --out")
    assert not (run / LOCK).exists()                               # a refusal releases the lock
    claim(run, resume=True, overwrite=False).release()
    with pytest.raises(UserError, match="exclude each other"):
        claim(run, resume=True, overwrite=True)
    claim(run, resume=False, overwrite=True).release()
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # the run's files only

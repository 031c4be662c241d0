"""Stopping and resuming a run as a user and a scheduler do: Ctrl-C and SIGTERM sent to the whole
process group (DataLoader workers included), the printed hint followed as written, a run started
with --sets resumed with them, and a --set that would change the run refused."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys

import pytest
import yaml
from paths import REPO
from trainer_data import read_log, train_command, trainer_env, wait_for_steps, write_config

pytestmark = pytest.mark.slow


def start_in_own_group(command: list[str]) -> subprocess.Popen:
    """A run in a new session: its process group is the trainer and its loader workers."""
    return subprocess.Popen(command, env=trainer_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def signal_group_mid_run(proc: subprocess.Popen, out, signum: int) -> str:
    """Send `signum` to the run's whole process group once it has logged a few steps; its stderr."""
    wait_for_steps(proc, out, 4)
    assert proc.poll() is None, "the run ended before it could be signalled"
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    return err


def as_command(hint: str) -> list[str]:
    """The printed `tsd …` command, run with this interpreter."""
    words = shlex.split(hint)
    assert words[0] == "tsd", hint
    return [sys.executable, "-m", "pipeline.cli", *words[1:]]


def stop_line(err: str, signame: str) -> tuple[int, str]:
    """(step, the hint) of the one 'tsd train: stopped by …' line."""
    lines = [line for line in err.splitlines() if line.startswith(f"tsd train: stopped by {signame} at step ")]
    assert len(lines) == 1 and "Traceback" not in err and "DataLoader worker" not in err, err[-3000:]
    step = int(lines[0].split("at step ")[1].split(";")[0])
    return step, lines[0].split("; continue with: ")[1]


def test_ctrl_c_to_the_group_then_the_printed_hint_resumes_with_the_runs_own_sets(tmp_path, release):
    config = write_config(tmp_path / "train.yaml", release)
    out = tmp_path / "run"
    sets = ["--set", "loss.mode=finetune", "--set", "optim.lr=0.002"]
    proc = start_in_own_group(train_command(config, out, *sets))
    err = signal_group_mid_run(proc, out, signal.SIGINT)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    step, hint = stop_line(err, "SIGINT")
    assert hint == f"tsd train --out {out} --resume"
    assert (out / "checkpoints" / f"step-{step:08d}").is_dir()

    # a --set that changes what the run computes: one line naming the key and both values, nothing touched
    refused = subprocess.run(as_command(hint) + ["--set", "loss.mode=distill"], env=trainer_env(), cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"tsd train: error: --set loss.mode=distill: the run in {out} was started with loss.mode=finetune; a resume "
        "continues the same run (only device, checkpoint_minutes, checkpoint_epochs, checkpoint_every, log_every, "
        "eval_every, keep_checkpoints may change): drop this --set, or start a new run folder"]
    assert (out / "checkpoints" / f"step-{step:08d}").is_dir() and not (out / "metrics.json").exists()

    resumed = subprocess.run(as_command(hint) + ["--set", "runtime.log_every=2"], env=trainer_env(), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    total = yaml.safe_load((out / "config.yaml").read_text())
    assert total["loss"]["mode"] == "finetune" and total["optim"]["lr"] == 0.002
    assert total["runtime"]["log_every"] == 2
    assert f"resuming from step {step} of " in resumed.stderr
    # per-epoch validation on the console, the last one at the end
    assert re.search(r"^val at epoch 3 \(step \d+\): top-1 \d\.\d{4}, agreement with the teacher \d\.\d{4}$",
                     resumed.stderr, re.M), resumed.stderr[-2000:]
    assert "(finetune)" in resumed.stdout
    steps = [e["step"] for e in read_log(out)]
    assert steps[:step] == list(range(1, step + 1)) and all(s % 2 == 0 for s in steps[step:-1])
    # finished: one checkpoint left (runtime.keep_checkpoints), the last step's
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{steps[-1]:08d}"]


def test_sigterm_to_the_group_checkpoints_and_resumes(tmp_path, release):
    """What `timeout` and Slurm's scancel do: every process of the job gets SIGTERM, the loader
    workers included; the run still checkpoints at the step boundary and exits 143."""
    config = write_config(tmp_path / "train.yaml", release, data={"workers": 2})
    out = tmp_path / "run"
    proc = start_in_own_group(train_command(config, out))
    err = signal_group_mid_run(proc, out, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    step, hint = stop_line(err, "SIGTERM")
    assert (out / "checkpoints" / f"step-{step:08d}").is_dir() and not (out / "train.lock").exists()
    resumed = subprocess.run(as_command(hint), env=trainer_env(), cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [e["step"] for e in read_log(out)] == list(range(1, len(read_log(out)) + 1))

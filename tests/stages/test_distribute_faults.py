"""Fault tolerance of the generation stage, with real kills and stops:

- SIGKILL a Ray worker process while it runs a shard: the worker is replaced, the shard redone, and
  the job ends with exactly the planned samples, every shard byte-identical to an uninterrupted run.
- SIGSTOP a worker mid-shard: past the shard's deadline the worker is killed and the shard given to
  another; the job ends within the deadline plus a margin, byte-identical, and returns at once.
- A worker whose constructor fails ends the job in one line naming node, host and cause.
- More workers than the cluster holds: clamped with a note; none it can hold: refused in one line.
- A seeded soak of SIGSTOP / SIGCONT / SIGKILL on workers at random moments (a bounded number of
  faults in a bounded time): the job completes byte-identical, counts exact, within a stated time.
  Small in the default run; `python -m pytest -q -m soak tests/test_generate_faults.py` runs a
  larger one (more, smaller shards and more faults; about 3 minutes on 2 cores).
- SIGKILL the driver (its whole process group): the same command again finishes the remaining
  shards only, and the result is again byte-identical.
The uninterrupted reference is the session's `small_release`, made from the same plan.
"""
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.config import load_job
from pipeline.contract.errors import JobFailed, UserError
from pipeline.contract.ids import sha256_file
from pipeline.contract.layout import HEAD_FILE as HEAD
from pipeline.contract.layout import MANIFEST, SHARD_SUFFIX, STATS_SUFFIX, TEACHER_DIR
from pipeline.stages import jobdir as stages
from pipeline.stages.distribute import generate_stage
from pipeline.stages.distribute.cluster import clamp_workers
from pipeline.stages.plan import plan_stage, read_plan


def copy_without_shards(src: Path, dst: Path) -> Path:
    """The job folder as it is before `tsd generate`: work/ (plan, job) and teacher/, no shards."""
    shutil.copytree(src / stages.WORK / "ingest", dst / stages.WORK / "ingest")
    shutil.copy(src / stages.WORK / "plan.parquet", dst / stages.WORK / "plan.parquet")
    shutil.copy(src / stages.WORK / "job.yaml", dst / stages.WORK / "job.yaml")
    shutil.copytree(src / TEACHER_DIR, dst / TEACHER_DIR)
    return dst


def reference_hashes(release: Path) -> dict:
    manifest = json.loads((release / MANIFEST).read_text())
    return {s["name"]: s["sha256"] for s in manifest["shards"]}


def produced_hashes(root: Path, names) -> dict:
    return {n: sha256_file(root / f"{n}{SHARD_SUFFIX}") for n in names}


def ray_processes(title: str) -> list[int]:
    """PIDs whose command line (Ray sets it to 'ray::Class.method' while a task runs) starts with title."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                # this session's workers only (another user's Ray may run on the machine)
                ours = f"TSD_CACHE={os.environ['TSD_CACHE']}".encode() in (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd.startswith(title) and ours:
                pids.append(int(entry.name))
    return pids


def done_shards(root: Path) -> list[Path]:
    return [p for d in ("real", "mix") if (root / d).is_dir() for p in (root / d).glob(f"*{STATS_SUFFIX}")]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_a_worker_mid_shard_gives_the_same_release(small_release, tmp_path):
    reference = reference_hashes(small_release["root"])
    root = copy_without_shards(small_release["root"], tmp_path / "job")
    job = load_job(root / stages.WORK / "job.yaml")
    assert set(read_plan(stages.plan_path(root)).shard_names()) == set(reference)

    result, error = {}, []

    def generate():
        try:
            result["summary"] = generate_stage(job, root, progress=False)
        except Exception as e:  # surfaced by the assertion below
            error.append(e)

    thread = threading.Thread(target=generate)
    thread.start()
    victim = wait_for(lambda: ray_processes("ray::ShardActor.run"), 240, "a worker running a shard")[0]
    finished_before_kill = len(done_shards(root))
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and not error, error
    assert finished_before_kill < len(reference), "the kill came after the last shard: nothing was tested"
    assert result["summary"].done == len(reference) - result["summary"].skipped
    assert produced_hashes(root, reference) == reference
    assert not list(root.rglob(".*.tmp-*")), "a partial shard was left behind"


def generate_in_thread(job, root):
    """generate_stage in a thread: (thread, result, errors, times) — times['returned'] set when it returns."""
    result, errors, times = {}, [], {}

    def generate():
        try:
            result["summary"] = generate_stage(job, root, progress=False)
        except Exception as e:  # surfaced by the caller's assertions
            errors.append(e)
        times["returned"] = time.time()

    thread = threading.Thread(target=generate)
    thread.start()
    return thread, result, errors, times


def last_publish(root: Path) -> float:
    return max(p.stat().st_mtime for p in done_shards(root))


def resume(pids) -> None:
    """SIGCONT what a test stopped (Ray kills a worker it gave up on; this leaves nothing stopped)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


DEADLINE_S = 20.0   # the floor the SIGSTOP tests run with: a tiny shard takes a few seconds even on a loaded machine


def test_a_stopped_worker_is_killed_at_its_deadline_and_its_shard_redone(small_release, tmp_path):
    reference = reference_hashes(small_release["root"])
    root = copy_without_shards(small_release["root"], tmp_path / "job")
    job = load_job(root / stages.WORK / "job.yaml", {"generate": {"deadline_floor_s": DEADLINE_S}})
    t0 = time.time()
    thread, result, errors, times = generate_in_thread(job, root)
    running = wait_for(lambda: ray_processes("ray::ShardActor.run") or errors, 240, "a worker running a shard")
    assert not errors, errors
    victim, stopped_at = running[0], time.time()
    os.kill(victim, signal.SIGSTOP)
    try:
        thread.join(timeout=240)
    finally:
        resume([victim])
    assert not thread.is_alive() and not errors, errors
    assert result["summary"].retries >= 1 and result["summary"].workers_lost >= 1, result["summary"]
    assert produced_hashes(root, reference) == reference
    # the stalled shard waited its deadline, then a worker's start (a few s) and the shard itself
    assert times["returned"] - stopped_at < DEADLINE_S + 60, (times["returned"] - stopped_at, time.time() - t0)
    # no hang at the end: the stopped worker is not waited for
    assert times["returned"] - last_publish(root) < 10


def test_a_worker_that_cannot_start_ends_the_job_in_one_line(small_release, tmp_path):
    root = copy_without_shards(small_release["root"], tmp_path / "job")
    (root / HEAD).write_bytes(b"not a safetensors file")   # every worker fails in its constructor
    job = load_job(root / stages.WORK / "job.yaml", {"generate": {"max_restarts": 1}})
    t0 = time.time()
    with pytest.raises(JobFailed) as failed:
        generate_stage(job, root, progress=False)
    message = str(failed.value)
    assert "\n" not in message and "failed to start on node " in message and ", host " in message, message
    assert "workers lost 2 times (generate.max_restarts 1)" in message, message
    assert time.time() - t0 < 120
    assert not done_shards(root)


def test_more_workers_than_the_cluster_holds_are_clamped_or_refused(small_release, ray_cluster, capsys):
    job = load_job(small_release["job_path"], {"generate": {"workers": 5, "cpus_per_worker": 1}})
    holds = int(ray_cluster.cluster_resources()["CPU"])
    assert clamp_workers(job.generate, gpu=False) == (5, holds)
    assert f"5 workers asked (generate.workers), the cluster holds {holds} of 1 CPU" in capsys.readouterr().err
    job = load_job(small_release["job_path"], {"generate": {"cpus_per_worker": holds + 1}})
    with pytest.raises(UserError, match=f"no node of the cluster can hold a worker of {holds + 1} CPUs"):
        clamp_workers(job.generate, gpu=False)
    # one GPU each on a cluster without GPUs: none can be held
    with pytest.raises(UserError, match="1 CPU and 1 GPU"):
        clamp_workers(load_job(small_release["job_path"]).generate, gpu=True)


def test_a_refused_worker_count_costs_seconds_not_a_wait(small_release, tmp_path, ray_cluster):
    root = copy_without_shards(small_release["root"], tmp_path / "job")
    holds = int(ray_cluster.cluster_resources()["CPU"])
    job = load_job(root / stages.WORK / "job.yaml", {"generate": {"cpus_per_worker": holds + 1}})
    t0 = time.time()
    with pytest.raises(UserError, match="generate.cpus_per_worker: no node of the cluster can hold"):
        generate_stage(job, root, progress=False)
    assert time.time() - t0 < 10


class FaultController(threading.Thread):
    """Seeded faults on the workers of this session while they run shards: `faults` of them, the
    first at once and the rest at random moments within `window_s`, each a SIGKILL, a SIGSTOP left for the deadline to handle, or
    a short SIGSTOP then SIGCONT (a pause the job must ride out)."""

    def __init__(self, seed: int, faults: int, window_s: float):
        super().__init__(daemon=True)
        self.rng = random.Random(seed)
        # the first fault lands at once, on the shard the caller saw running: on a fast machine a
        # small job can finish before any later drawn moment, and a soak with no fault tests nothing
        self.moments = [0.0] + sorted(self.rng.uniform(0.5, window_s) for _ in range(faults - 1))
        self.applied: list[tuple[str, int]] = []
        self.stopped: list[int] = []
        self.halt = threading.Event()

    def run(self):
        t0 = time.time()
        for moment in self.moments:
            if self.halt.wait(max(0.0, t0 + moment - time.time())):
                return
            # a fault is for a running shard: wait for one (between shards, or on an idle machine where
            # shards are short, nothing may be running at the drawn moment); halt ends it with the job
            while not (busy := sorted(ray_processes("ray::ShardActor.run"))):
                if self.halt.wait(0.02):
                    return
            pid, action = self.rng.choice(busy), self.rng.choice(["kill", "stop", "pause"])
            with contextlib.suppress(ProcessLookupError):
                if action == "kill":
                    os.kill(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGSTOP)
                    self.stopped.append(pid)
                    if action == "pause":
                        time.sleep(self.rng.uniform(0.2, 1.0))
                        os.kill(pid, signal.SIGCONT)
                self.applied.append((action, pid))


def soak(small_release, root: Path, reference: dict, seed: int, faults: int, window_s: float, bound_s: float,
         overrides: dict | None = None):
    job = load_job(root / stages.WORK / "job.yaml", {"generate": {
        "deadline_floor_s": DEADLINE_S, "max_retries": faults, "max_restarts": faults + 2, **(overrides or {})}})
    controller = FaultController(seed, faults, window_s)
    t0 = time.time()
    thread, result, errors, times = generate_in_thread(job, root)
    wait_for(lambda: ray_processes("ray::ShardActor.run") or not thread.is_alive(), 240, "a worker running a shard")
    controller.start()
    try:
        thread.join(timeout=bound_s + 60)
    finally:
        controller.halt.set()
        controller.join()
        resume(controller.stopped)
    assert not thread.is_alive() and not errors, (errors, controller.applied)
    assert controller.applied, "no fault landed on a running shard: nothing was tested"
    assert produced_hashes(root, reference) == reference
    planned = read_plan(stages.plan_path(root))
    summary = result["summary"]
    assert summary.done == len(reference) and summary.samples == len(planned) - summary.failures
    assert not list(root.rglob(".*.tmp-*")), "a partial shard was left behind"
    wall = times["returned"] - t0
    assert wall < bound_s, f"{wall:.0f} s with faults {controller.applied}"
    return result, controller.applied, wall


def test_a_seeded_fault_soak_gives_the_same_release(small_release, tmp_path):
    reference = reference_hashes(small_release["root"])
    root = copy_without_shards(small_release["root"], tmp_path / "job")
    soak(small_release, root, reference, seed=18, faults=3, window_s=4, bound_s=180)


@pytest.mark.soak
def test_a_larger_fault_soak_on_many_small_shards(small_release, tmp_path):
    """Shards of 4 samples, a clean run first (the reference), then 12 faults within 40 s."""
    clean = copy_without_shards(small_release["root"], tmp_path / "clean")
    overrides = {"generate": {"shard_size": 4}}
    job = load_job(clean / stages.WORK / "job.yaml", overrides)
    plan_stage(job, clean)
    generate_stage(job, clean, progress=False)
    names = read_plan(stages.plan_path(clean)).shard_names()
    reference = produced_hashes(clean, names)
    root = copy_without_shards(small_release["root"], tmp_path / "job")
    plan_stage(job, root)
    soak(small_release, root, reference, seed=1807, faults=12, window_s=40, bound_s=400, overrides={"shard_size": 4})


def test_killed_driver_rerun_finishes_only_the_remaining_shards(small_release, tmp_path):
    reference = reference_hashes(small_release["root"])
    root = copy_without_shards(small_release["root"], tmp_path / "job")
    cmd = [sys.executable, "-m", "pipeline.cli", "generate", str(root / stages.WORK / "job.yaml"),
           "--out", str(root), "--set", "generate.workers=1"]
    env = dict(os.environ, RAY_ADDRESS="")  # a cluster of its own, like a user's fresh run
    first = subprocess.Popen(cmd, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: done_shards(root) or first.poll() is not None, 180, "the first finished shard")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the local cluster it started
        first.wait()
    time.sleep(2)  # a worker of the dead cluster may still publish the shard it was on: let it settle
    kept = {p: p.stat().st_mtime_ns for p in done_shards(root)}
    assert 0 < len(kept) < len(reference), f"{len(kept)} of {len(reference)} shards done at the kill"

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    exited = time.time()
    assert second.returncode == 0, second.stderr[-2000:]
    # no hang at the end: the driver kills its workers and shuts its local Ray down in bounded time
    assert exited - last_publish(root) < 30, f"exited {exited - last_publish(root):.0f} s after the last shard"
    assert f"{len(reference) - len(kept)} shards made, {len(kept)} already done" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "a finished shard was redone"
    assert produced_hashes(root, reference) == reference

"""Fault tolerance of the generation stage, with real kills:

- SIGKILL a Ray worker process while it runs a shard: the actor restarts, the task is retried, and
  the job ends with exactly the planned samples, every shard byte-identical to an uninterrupted run.
- SIGKILL the driver (its whole process group): the same command again finishes the remaining
  shards only, and the result is again byte-identical.
The uninterrupted reference is the session's `small_release`, made from the same plan.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipeline.config import load_job
from pipeline.contract.ids import sha256_file
from pipeline.contract.layout import MANIFEST, SHARD_SUFFIX, STATS_SUFFIX, TEACHER_DIR
from pipeline.stages import jobdir as stages
from pipeline.stages.distribute import generate_stage
from pipeline.stages.plan import read_plan


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
            result.update(generate_stage(job, root, progress=False))
        except Exception as e:  # surfaced by the assertion below
            error.append(e)

    thread = threading.Thread(target=generate)
    thread.start()
    victim = wait_for(lambda: ray_processes("ray::ShardActor.run"), 120, "a worker running a shard")[0]
    finished_before_kill = len(done_shards(root))
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and not error, error
    assert finished_before_kill < len(reference), "the kill came after the last shard: nothing was tested"
    assert result["done"] == len(reference) - result["skipped"]
    assert produced_hashes(root, reference) == reference
    assert not list(root.rglob(".*.tmp-*")), "a partial shard was left behind"


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
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"{len(reference) - len(kept)} shards made, {len(kept)} already done" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "a finished shard was redone"
    assert produced_hashes(root, reference) == reference

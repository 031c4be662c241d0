"""`tsd generate` on a real two-node Ray cluster started here (`ray start --head`, then
`ray start --address`, distinct ports and temp dirs, token authentication on), writing to a bucket
of a real S3 API, as a cluster without a shared disk would:

- both nodes make shards, byte-identical to the local run; each stats file says where and how;
- a driver without the cluster's token is refused in one line, fast;
- the README's `ray job submit` runs as written, resumes, and its log is plain lines;
- a node lost mid-job costs only its in-flight shard, and a node added mid-job gets work
  (`python -m pytest -q -m cluster_nodes tests/test_ray_cluster.py`: about 8 minutes on 2 cores).
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray_nodes import NODE_ENV, TwoNodeCluster

from pipeline.contract import storage
from pipeline.contract.layout import MANIFEST, TEACHER_DIR
from pipeline.stages import jobdir
from paths import REPO



@pytest.fixture(scope="module")
def cluster(moto_server):
    if not shutil.which("ray", path=os.path.dirname(sys.executable)):
        pytest.skip("needs the `ray` command (the pipeline extra)")
    env = {"PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "TSD_PROGRESS_EVERY": "1"}
    with TwoNodeCluster(include_dashboard=True, extra_env=env) as c:
        yield c
    assert not c.leftover_pids, c.leftover_pids


def job_folder(small_release, url: str) -> str:
    """The job folder in the bucket as `tsd plan` and `tsd probe` leave it: the plan and the teacher."""
    src = small_release["root"]
    storage.copy(str(src / jobdir.WORK / "plan.parquet"), jobdir.plan_path(url))
    for f in sorted((src / TEACHER_DIR).iterdir()):
        storage.copy(str(f), f"{url}/{TEACHER_DIR}/{f.name}")
    return url


def job_file(small_release, tmp_path, **generate) -> Path:
    job = yaml.safe_load(Path(small_release["job_path"]).read_text())
    job["generate"].update(workers=2, cpus_per_worker=1, **generate)  # one actor per node (each has one CPU)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def driver_env(cluster, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    path = f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}"  # `ray` and `tsd`, as installed
    return {**env, **cluster.driver_env, "PATH": path, "TSD_PROGRESS_EVERY": "1", **extra}


def reference_hashes(small_release) -> dict:
    return {s["name"]: s["sha256"] for s in json.loads((small_release["root"] / MANIFEST).read_text())["shards"]}


def test_two_nodes_make_the_local_runs_shards(small_release, s3_bucket, cluster, tmp_path):
    root = job_folder(small_release, f"{s3_bucket}/two-nodes")
    cmd = [sys.executable, "-m", "pipeline.cli", "generate", str(job_file(small_release, tmp_path)),
           "--out", root, "--address", cluster.address]
    proc = subprocess.run(cmd, env=driver_env(cluster), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = reference_hashes(small_release)
    assert f"generate: {len(reference)} shards made" in proc.stdout
    assert {n: storage.sha256(f"{root}/{n}.tar") for n in reference} == reference
    stats = [json.loads(storage.read_bytes(f"{root}/{n}.stats.json")) for n in reference]
    for s in stats:
        assert {"node_id", "host", "pid", "device", "seconds"} <= s.keys() and s["device"] == "cpu"
    assert len({s["node_id"] for s in stats}) == 2, "one node made every shard"
    assert len({(s["node_id"], s["pid"]) for s in stats}) == 2
    assert "\r" not in proc.stderr and "generate: " in proc.stderr  # progress: plain lines off a terminal


def test_a_driver_without_the_token_is_refused_in_one_line(small_release, s3_bucket, cluster, tmp_path):
    root = job_folder(small_release, f"{s3_bucket}/refused")
    cmd = [sys.executable, "-m", "pipeline.cli", "generate", str(job_file(small_release, tmp_path)),
           "--out", root, "--address", cluster.address]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=driver_env(cluster, RAY_AUTH_MODE="disabled"), capture_output=True, text=True,
                          timeout=120)
    seconds = time.monotonic() - t0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("tsd generate: error: ") and "RAY_AUTH_MODE" in lines[0]
    assert str(cluster.token_path) in lines[0]  # the token file it looked for (RAY_AUTH_TOKEN_PATH)
    assert seconds < 15, f"took {seconds:.1f} s: Ray's 20 s of retries were not cut short"


@pytest.mark.cluster_submit
def test_ray_job_submit_as_the_readme_writes_it(small_release, s3_bucket, cluster, tmp_path):
    readme = (REPO / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("ray job submit") and "python -m pipeline.cli" in x)
    root = job_folder(small_release, f"{s3_bucket}/job-submit")
    # half the shards done already: the job resumes
    reference = reference_hashes(small_release)
    names = sorted(reference)
    job = job_file(small_release, tmp_path)
    ours = line.replace("http://HEAD:8265", cluster.dashboard_url).replace("manifests/cub200.yaml", str(job)) \
        .replace("s3://bucket/releases/cub200", root).replace("--working-dir .", f"--working-dir {REPO}")
    for n in names[:5]:
        for suffix in (".tar", ".stats.json"):
            storage.copy(str(small_release["root"] / f"{n}{suffix}"), f"{root}/{n}{suffix}")
    proc = subprocess.run(ours, shell=True, env=driver_env(cluster), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (ours, proc.stdout[-3000:], proc.stderr[-3000:])
    assert f"generate: {len(names) - 5} shards made, 5 already done" in proc.stdout, proc.stdout[-3000:]
    assert "\r" not in proc.stdout
    assert {n: storage.sha256(f"{root}/{n}.tar") for n in reference} == reference


@pytest.fixture
def lossy_cluster(moto_server):
    """A two-node cluster of its own: the test below loses a node and adds one."""
    if not shutil.which("ray", path=os.path.dirname(sys.executable)):
        pytest.skip("needs the `ray` command (the pipeline extra)")
    env = {"PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    with TwoNodeCluster(extra_env=env) as c:
        yield c
    assert not c.leftover_pids, c.leftover_pids


def node_processes(title: str, node: str) -> list[int]:
    """PIDs titled `title` (Ray's 'ray::Class.method') that belong to test-cluster node `node`."""
    tag = f"{NODE_ENV}={node}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ours = tag in (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if ours and cmd.startswith(title):
                found.append(int(entry.name))
    return found


def wait_until(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job ended (status {proc.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def run_during(cmd, env, logs: Path, during) -> tuple[int, str, str]:
    """Run `cmd` while `during(proc, stderr_path)` acts on the cluster; (status, stdout, stderr)."""
    out_path, err_path = logs.with_suffix(".out"), logs.with_suffix(".err")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        try:
            during(proc, err_path)
            proc.wait(timeout=400)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return proc.returncode, out_path.read_text(), err_path.read_text()


def shard_stats(root: str, names) -> dict:
    return {n: json.loads(storage.read_bytes(f"{root}/{n}.stats.json")) for n in names}


@pytest.mark.cluster_nodes
def test_a_node_lost_and_a_node_added_mid_job(small_release, s3_bucket, lossy_cluster, tmp_path):
    """Lose the worker node while it makes a shard: the job completes on the head, byte-identical
    to a local run. Then start a job while only the head is up (2 workers asked, 1 placed, with a
    note) and add a node: it gets work. Shards of 4 samples, so that the job outlasts a worker's
    start on a loaded machine; the local run of that plan is the reference."""
    from pipeline.config import load_job
    from pipeline.stages.distribute import generate_stage
    from pipeline.stages.plan import plan_stage, read_plan

    local = tmp_path / "local"
    shutil.copytree(small_release["root"] / jobdir.WORK / "ingest", local / jobdir.WORK / "ingest")
    shutil.copytree(small_release["root"] / TEACHER_DIR, local / TEACHER_DIR)
    small = load_job(small_release["job_path"], {"generate": {"shard_size": 4}})
    plan_stage(small, local)
    generate_stage(small, local, progress=False)
    names = read_plan(jobdir.plan_path(local)).shard_names()
    reference = {n: storage.sha256(str(local / f"{n}.tar")) for n in names}
    job = job_file(small_release, tmp_path, shard_size=4)
    env = driver_env(lossy_cluster)

    def job_folder_of_the_plan(url):
        storage.copy(jobdir.plan_path(local), jobdir.plan_path(url))
        for f in sorted((local / TEACHER_DIR).iterdir()):
            storage.copy(str(f), f"{url}/{TEACHER_DIR}/{f.name}")
        return url

    root = job_folder_of_the_plan(f"{s3_bucket}/node-lost")
    cmd = [sys.executable, "-m", "pipeline.cli", "generate", str(job), "--out", root,
           "--address", lossy_cluster.address]
    def lose_the_worker_node(proc, err):
        wait_until(lambda: node_processes("ray::ShardActor.run", "worker"), 300, "the worker node making a shard", proc)
        lossy_cluster.kill_node("worker")

    returncode, stdout, stderr = run_during(cmd, env, tmp_path / "lost", lose_the_worker_node)
    assert returncode == 0, stderr[-3000:]
    # its in-flight shard was redone on the head; the shards it had finished stay
    assert f"generate: {len(reference)} shards made" in stdout and ", 1 worker(s) lost, 1 shard(s) retried" in stdout
    assert {n: storage.sha256(f"{root}/{n}.tar") for n in reference} == reference

    root = job_folder_of_the_plan(f"{s3_bucket}/node-added")
    cmd[cmd.index("--out") + 1] = root
    def add_a_node(proc, err):
        wait_until(lambda: "more if nodes join" in err.read_text(), 120,
                   "the note that the cluster holds fewer workers than asked", proc)
        lossy_cluster.add_node("late")

    returncode, stdout, stderr = run_during(cmd, env, tmp_path / "added", add_a_node)
    assert returncode == 0, stderr[-3000:]
    assert "2 workers asked (generate.workers), the cluster holds 1 of 1 CPU: starting 1" in stderr
    assert {n: storage.sha256(f"{root}/{n}.tar") for n in reference} == reference
    made_by = {s["node_id"] for s in shard_stats(root, reference).values()}
    assert len(made_by) == 2, "the node added mid-job made no shard"

"""Releases on object storage, end to end, against a real S3 API (moto's server on loopback):

- ingest → probe → plan → generate → release straight into a bucket (sources and teacher weights
  in the bucket too), byte-identical to the local release; verify it there; train and evaluate a
  student from it; a flipped byte of a shard object is named by verify; no local `s3:` folder;
- SIGKILL a Ray worker in the middle of a shard's upload: the object never appears half-written,
  the retried shard completes the release and a rerun has nothing left to do.
"""
import contextlib
import io
import json
import os
import signal
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from s3_server import s3_objects

from pipeline.cli import main
from pipeline.contract import storage
from pipeline.contract.ids import sha256_file
from pipeline.contract.layout import MANIFEST, TEACHER_DIR
from pipeline.stages import jobdir
from paths import REPO



def reference_hashes(release: Path) -> dict:
    return {s["name"]: s["sha256"] for s in json.loads((release / MANIFEST).read_text())["shards"]}


def bucket_hashes(root: str, names) -> dict:
    return {n: storage.sha256(f"{root}/{n}.tar") for n in names}


def tsd(*args) -> tuple[int, str, str]:
    """`tsd ARGS` in this process (its Ray cluster is the session's): exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def no_colon_folders(*roots) -> list:
    return [p for root in roots for p in Path(root).rglob("*") if p.is_dir() and p.name.endswith(":")]


def upload_tree(local: Path, url: str) -> list[str]:
    rels = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    for rel in rels:
        storage.copy(str(local / rel), f"{url}/{rel}")
    return rels


@pytest.fixture(scope="module")
def bucket_release(small_release, moto_server, tmp_path_factory):
    """The small release made straight into a bucket by the CLI, from sources and teacher weights in
    the bucket too: ingest → probe → plan → generate → release, run from an empty folder."""
    import fsspec

    bucket = f"s3://tsd-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(bucket[5:])
    work = tmp_path_factory.mktemp("bucket-release")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        files = upload_tree(small_release["root"] / "work" / "source", f"{bucket}/src")
        storage.publish_bytes(f"{bucket}/src/list.csv",
                              ("path,label\n" + "".join(f"{f},{f.split('/')[0]}\n" for f in files)).encode())
        weights = small_release["models"]["teacher"]
        storage.copy(weights, f"{bucket}/models/teacher.safetensors")
        code, _, err = tsd("ingest", f"{bucket}/src/list.csv", "--out", f"{bucket}/ingest", "--val-fraction", "0.15",
                           "--workers", "1")
        assert code == 0, err
        job = yaml.safe_load(Path(small_release["job_path"]).read_text())
        job["data"]["index"] = f"{bucket}/ingest/index.parquet"
        job["teacher"].update(weights=f"{bucket}/models/teacher.safetensors", weights_sha256=sha256_file(weights))
        (work / "job.yaml").write_text(yaml.safe_dump(job))
        rel = f"{bucket}/releases/small"
        for stage in ("probe", "plan", "generate", "release"):
            code, _, err = tsd(stage, work / "job.yaml", "--out", rel)
            assert code == 0, (stage, err[-3000:])
    finally:
        os.chdir(cwd)
    return {"bucket": bucket, "release": rel, "work": work}


def test_a_release_made_in_a_bucket_equals_the_local_one_and_verifies(small_release, bucket_release, tmp_path):
    rel, reference = bucket_release["release"], reference_hashes(small_release["root"])
    assert bucket_hashes(rel, reference) == reference  # the same bytes as the release made on disk
    code, out, _ = tsd("verify", rel)
    assert code == 0 and out.strip().endswith(": OK"), out
    assert tsd("verify", rel, "--quick")[0] == 0
    # a subset of it, into the same bucket, is a valid release too
    from pipeline.tools.reader import ReleaseReader

    uids = ReleaseReader(rel).index_table(["uid"]).column("uid").to_pylist()[::7]
    (tmp_path / "uids.txt").write_text("\n".join(uids))
    assert tsd("subset", rel, "--uids", tmp_path / "uids.txt", "--out", f"{bucket_release['bucket']}/subset")[0] == 0
    code, out, _ = tsd("verify", f"{bucket_release['bucket']}/subset")
    assert code == 0, out
    assert not no_colon_folders(bucket_release["work"], tmp_path, REPO), "a URL became a local folder"


def test_a_student_trains_and_is_evaluated_from_the_bucket(small_release, bucket_release, tmp_path):
    from pipeline.demo.runner import SIZES, train_config

    rel = bucket_release["release"]
    cfg = train_config(rel, small_release["models"], "distill", SIZES["small"])
    cfg["optim"]["epochs"] = 1
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    # shards streamed from the bucket by a DataLoader worker process
    code, out, err = tsd("train", tmp_path / "train.yaml", "--out", tmp_path / "run")
    assert code == 0 and "val top-1" in out, err[-3000:]
    code, out, err = tsd("eval", tmp_path / "run", rel, "--workers", "0")
    assert code == 0 and "top1" in out, err[-3000:]


def test_verify_names_a_flipped_byte_of_a_shard_object(small_release, bucket_release):
    rel = bucket_release["release"]
    victim = sorted(reference_hashes(small_release["root"]))[1]
    original = storage.read_bytes(f"{rel}/{victim}.tar")
    data = bytearray(original)
    data[1000] ^= 0xFF  # same size: only the full check sees it
    storage.publish_bytes(f"{rel}/{victim}.tar", bytes(data))
    try:
        code, out, _ = tsd("verify", rel)
        assert code == 1 and f"BAD {victim}: sha256" in out and out.count("BAD ") == 1, out
        assert tsd("verify", rel, "--quick")[0] == 0
    finally:
        storage.publish_bytes(f"{rel}/{victim}.tar", original)


def ray_processes(title: str) -> list[int]:
    """PIDs of this session's Ray workers whose title starts with `title` (never another user's:
    they must carry this session's TSD_CACHE, set before its Ray cluster started)."""
    marker = f"TSD_CACHE={os.environ['TSD_CACHE']}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(title.encode()) \
                        and marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_sigkill_a_worker_mid_upload_leaves_no_partial_shard(small_release, s3_bucket, moto_server):
    from pipeline.config import load_job
    from pipeline.stages.distribute import generate_stage

    reference = reference_hashes(small_release["root"])
    src, root = small_release["root"], f"{s3_bucket}/job"
    storage.copy(str(src / jobdir.WORK / "plan.parquet"), jobdir.plan_path(root))
    upload_tree(src / TEACHER_DIR, f"{root}/{TEACHER_DIR}")
    job = load_job(src / jobdir.WORK / "job.yaml", {"generate": {"workers": 1}})

    uploads = moto_server.uploads
    uploads.arm(".tar")  # the first shard upload is received slowly
    result, error = {}, []

    def generate():
        try:
            result["summary"] = generate_stage(job, root, progress=False)
        except Exception as e:  # surfaced below
            error.append(e)

    thread = threading.Thread(target=generate)
    thread.start()
    assert uploads.in_flight.wait(180), "no shard upload started"
    victims = ray_processes("ray::ShardActor")
    assert victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    uploads.client_gone.set()
    assert uploads.aborted.wait(30), "the upload finished before the kill"
    key = uploads.key.lstrip("/")
    assert not storage.exists(f"s3://{key}"), "a partial shard object appeared"
    thread.join(timeout=300)
    assert not thread.is_alive() and not error, error
    assert result["summary"].done == len(reference)
    assert bucket_hashes(root, reference) == reference
    objects = s3_objects(root)
    shard_objects = {k for k in objects if k.startswith(("real/", "mix/"))}
    assert shard_objects == {f"{n}{suffix}" for n in reference for suffix in (".tar", ".stats.json")}
    again = generate_stage(job, root, progress=False)
    assert again.done == 0 and again.skipped == len(reference)

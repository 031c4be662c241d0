"""Releases on object storage, end to end, against a real S3 API (moto's server on loopback):

- ingest → probe → plan → generate → release straight into a bucket (sources and teacher weights
  in the bucket too), byte-identical to the local release; verify it there; train and evaluate a
  student from it; a flipped byte of a shard object is named by verify; no local `s3:` folder;
- SIGKILL a Ray worker in the middle of a shard's upload: the object never appears half-written,
  the retried shard completes the release and a rerun has nothing left to do.
"""
import json
import os
import signal
import threading
from pathlib import Path

import yaml
from s3_fixtures import s3_objects

from pipeline.cli import main
from pipeline.contract import storage
from pipeline.contract.ids import sha256_file
from pipeline.contract.layout import MANIFEST, TEACHER_DIR
from pipeline.stages import jobdir

REPO = Path(__file__).resolve().parents[1]


def reference_hashes(release: Path) -> dict:
    return {s["name"]: s["sha256"] for s in json.loads((release / MANIFEST).read_text())["shards"]}


def bucket_hashes(root: str, names) -> dict:
    return {n: storage.sha256(f"{root}/{n}.tar") for n in names}


def tsd(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def no_colon_folders(*roots) -> list:
    return [p for root in roots for p in Path(root).rglob("*") if p.is_dir() and p.name.endswith(":")]


def upload_tree(local: Path, url: str) -> list[str]:
    rels = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    for rel in rels:
        storage.copy(str(local / rel), f"{url}/{rel}")
    return rels


def test_a_release_made_in_a_bucket_is_verified_trained_on_and_its_damage_named(
        small_release, s3_bucket, tmp_path, monkeypatch, capsys):
    from pipeline.demo.runner import SIZES, train_config

    monkeypatch.chdir(tmp_path)
    source, rel = small_release["root"] / "work" / "source", f"{s3_bucket}/releases/small"
    # the source images and the teacher's weights live in the bucket too
    files = upload_tree(source, f"{s3_bucket}/src")
    storage.publish_bytes(f"{s3_bucket}/src/list.csv",
                          ("path,label\n" + "".join(f"{f},{f.split('/')[0]}\n" for f in files)).encode())
    weights = small_release["models"]["teacher"]
    storage.copy(weights, f"{s3_bucket}/models/teacher.safetensors")
    code, _, err = tsd(capsys, "ingest", f"{s3_bucket}/src/list.csv", "--out", f"{s3_bucket}/ingest",
                       "--val-fraction", "0.15", "--workers", "1")
    assert code == 0, err
    job = yaml.safe_load(Path(small_release["job_path"]).read_text())
    job["data"]["index"] = f"{s3_bucket}/ingest/index.parquet"
    job["teacher"].update(weights=f"{s3_bucket}/models/teacher.safetensors", weights_sha256=sha256_file(weights))
    job_path = tmp_path / "job.yaml"
    job_path.write_text(yaml.safe_dump(job))

    for stage in ("probe", "plan", "generate", "release"):
        code, out, err = tsd(capsys, stage, job_path, "--out", rel)
        assert code == 0, (stage, err[-3000:])
    reference = reference_hashes(small_release["root"])
    assert bucket_hashes(rel, reference) == reference  # the same bytes as the release made on disk
    code, out, _ = tsd(capsys, "verify", rel)
    assert code == 0 and out.strip().endswith(": OK"), out
    assert tsd(capsys, "verify", rel, "--quick")[0] == 0
    # a subset of it, into the same bucket, is a valid release too
    from pipeline.tools.reader import ReleaseReader

    uids = ReleaseReader(rel).index_table(["uid"]).column("uid").to_pylist()[::7]
    (tmp_path / "uids.txt").write_text("\n".join(uids))
    assert tsd(capsys, "subset", rel, "--uids", tmp_path / "uids.txt", "--out", f"{s3_bucket}/subset")[0] == 0
    code, out, _ = tsd(capsys, "verify", f"{s3_bucket}/subset")
    assert code == 0, out

    # a student from the bucket, then evaluated on it (shards streamed by DataLoader workers)
    cfg = train_config(rel, small_release["models"], "distill", SIZES["small"])
    cfg["optim"]["epochs"] = 1
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    code, out, err = tsd(capsys, "train", tmp_path / "train.yaml", "--out", tmp_path / "run")
    assert code == 0 and "val top1" in out, err[-3000:]
    code, out, err = tsd(capsys, "eval", tmp_path / "run", rel, "--workers", "0")
    assert code == 0 and "top1" in out, err[-3000:]

    # flip one byte of a shard object (same size: only the full check sees it)
    victim = sorted(reference)[1]
    data = bytearray(storage.read_bytes(f"{rel}/{victim}.tar"))
    data[1000] ^= 0xFF
    storage.publish_bytes(f"{rel}/{victim}.tar", bytes(data))
    code, out, _ = tsd(capsys, "verify", rel)
    assert code == 1 and f"BAD {victim}: sha256" in out and out.count("BAD ") == 1, out
    assert tsd(capsys, "verify", rel, "--quick")[0] == 0
    assert not no_colon_folders(tmp_path, REPO, small_release["root"]), "a URL became a local folder"


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
            result.update(generate_stage(job, root, progress=False))
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
    assert result["done"] == len(reference)
    assert bucket_hashes(root, reference) == reference
    objects = s3_objects(root)
    shard_objects = {k for k in objects if k.startswith(("real/", "mix/"))}
    assert shard_objects == {f"{n}{suffix}" for n in reference for suffix in (".tar", ".stats.json")}
    again = generate_stage(job, root, progress=False)
    assert again["done"] == 0 and again["skipped"] == len(reference)

"""The storage door (contract.storage) against a real S3 API (moto's server on loopback): schemes it
cannot serve are one line and write nothing, publishing is complete or not at all, listings are
fresh, weight URLs are downloaded once and checked."""
import sys
from pathlib import Path

import pytest

from pipeline.contract import storage
from pipeline.contract.errors import UserError
from paths import REPO





def test_schemes_that_cannot_be_served_are_one_line(monkeypatch):
    with pytest.raises(UserError, match=r"unknown storage scheme 'foo://'"):
        storage.location("foo://bucket/release")
    with pytest.raises(UserError, match=r"s3:/bucket/x: not a URL \(s3: without '//'"):
        storage.location("s3:/bucket/x")
    with pytest.raises(UserError, match=r"not a URL"):
        storage.exists("gs:bucket")
    monkeypatch.setitem(sys.modules, "ossfs", None)  # a known scheme whose package is not installed
    with pytest.raises(UserError, match=r"oss://b/x: the oss:// scheme needs the ossfs package \(pip install ossfs\)"):
        storage.location("oss://b/x")
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "gs", raising=False)
    with pytest.raises(UserError, match=r"needs the gcsfs package \(pip install 'tsdistill\[gcs\]'\)"):
        storage.read_bytes("gs://b/x")
    assert storage.location("relative/dir").startswith("/") and storage.join("s3://b", "x/", "/y") == "s3://b/x/y"


def test_cli_refuses_unknown_and_misspelt_urls_writing_nothing(small_job, tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    job = small_job["job_path"]
    monkeypatch.chdir(tmp_path)
    cases = [("plan", job, "--out", "foo://bucket/rel"), ("probe", job, "--out", "s3:/bucket/rel"),
             ("ingest", small_job["root"] / "work" / "source", "--out", "s3:bucket/ingest"),
             ("release", job, "--out", "az:/container/rel"), ("verify", "s3:/bucket/rel"),
             ("generate", job, "--out", "gs:/bucket/rel")]
    for args in cases:
        code = main([str(a) for a in args])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"tsd {args[0]}: error: "), (args, lines)
        assert "scheme" in lines[0] or "not a URL" in lines[0]
    assert not list(tmp_path.iterdir()), "something was written"
    assert not [p for p in REPO.iterdir() if p.name.endswith(":")]


def test_publish_is_complete_or_absent_and_listings_are_fresh(s3_bucket, tmp_path):
    import fsspec

    from pipeline.contract.shards import finished_shards, publish_shard

    root = f"{s3_bucket}/rel"
    assert finished_shards(root, ["real/train-000000", "real/train-000001"]) == {}
    publish_shard(root, "real/train-000000", b"x" * 1000, {"count": 1, "samples": []})
    # another process (its own client) publishes a shard after this one listed the folder
    other = fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False)
    other.pipe_file(f"{root}/real/train-000001.tar"[5:], b"y" * 10)
    other.pipe_file(f"{root}/real/train-000001.stats.json"[5:], b'{"bytes": 10, "count": 1}')
    assert sorted(finished_shards(root, ["real/train-000000", "real/train-000001"])) == \
        ["real/train-000000", "real/train-000001"]
    other.rm_file(f"{root}/real/train-000001.tar"[5:])  # a tar gone: the shard is not done any more
    assert sorted(finished_shards(root, ["real/train-000000", "real/train-000001"])) == ["real/train-000000"]
    # a missing bucket is an error, never a bucket created behind the user's back
    with pytest.raises(UserError, match="cannot write"):
        storage.publish_bytes("s3://no-such-bucket-tsd/x.json", b"{}")
    assert not other.exists("no-such-bucket-tsd")
    # a failure while the data is produced publishes nothing
    with pytest.raises(RuntimeError):
        with storage.publishing(f"{root}/index.parquet") as local:
            Path(local).write_bytes(b"half")
            raise RuntimeError("killed")
    assert not storage.exists(f"{root}/index.parquet")


def test_weight_urls_are_downloaded_once_and_checked(s3_bucket, tmp_path, monkeypatch):
    from pipeline.contract.ids import sha256_bytes

    monkeypatch.setenv("TSD_CACHE", str(tmp_path / "cache"))
    data = b"weights" * 1000
    url = f"{s3_bucket}/models/teacher.safetensors"
    storage.publish_bytes(url, data)
    with pytest.raises(UserError, match="sha256 .* differs from the configured"):
        storage.cached_local(url, "0" * 64)
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))
    local = storage.cached_local(url, sha256_bytes(data))
    assert Path(local).read_bytes() == data
    storage.remove(url)  # the second node-local call does not download again
    assert storage.cached_local(url, sha256_bytes(data)) == local


def test_config_checks_urls_before_any_model_loads(small_job, tmp_path):
    import yaml

    from pipeline.config import load_job
    from pipeline.contract.configlib import ConfigError

    job = yaml.safe_load(Path(small_job["job_path"]).read_text())
    for teacher, message in (({"weights": "s3:/bucket/t.safetensors"}, "teacher.weights: s3:/bucket"),
                             ({"weights": "foo://b/t.safetensors"}, "teacher.weights: foo://b/t.safetensors: unknown"),
                             ({"weights": "memory://t.safetensors"}, "teacher.weights: file not found"),
                             ({"weights_sha256": "abc"}, "teacher.weights_sha256: expected 64 hex digits")):
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump({**job, "teacher": {**job["teacher"], **teacher}}))
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            load_job(path)
    storage.publish_bytes("memory://t.safetensors", b"x")
    path.write_text(yaml.safe_dump({**job, "teacher": {**job["teacher"], "weights": "memory://t.safetensors"}}))
    with pytest.raises(ConfigError, match="teacher.weights_sha256: required when weights is a URL"):
        load_job(path)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_bench_scale_phases_run_and_report(tmp_path, task):
    """`tsd bench scale` at a tiny size, its phases in this process: a plan, shards, the driver's look, a
    release; of a segmentation index too (its mask columns)."""
    import json

    from pipeline.contract.manifest import read_manifest
    from pipeline.bench import scale as bench_scale
    from pipeline.sources.index import index_task

    folder = str(tmp_path)
    (tmp_path / "job.json").write_text(json.dumps(bench_scale.job_dict(folder, 1900, 64, 3)))
    bench_scale.write_index(folder, 1900, task)
    assert index_task(tmp_path / "ingest" / "index.parquet") == task
    planned = bench_scale.phase_plan(folder)
    assert planned["samples"] == 1900 and planned["shards"] == 32
    bench_scale.phase_fake_shards(folder)
    assert bench_scale.phase_bookkeeping(folder) == {"pending": 0, "shards": 32}
    assert bench_scale.phase_release(folder) == {"indexed": 1900}
    assert sum(read_manifest(folder)["counts"].values()) == 1900
    row = {"size": 1900, **{p: {"seconds": 1.0, "cpu_seconds": 0.5, "peak_bytes": 1 << 28, "shards": 31}
                            for p in ("plan", "bookkeeping", "release")}}
    assert "plan + release 2.0 s" in bench_scale.line(row)


def test_a_relative_output_inside_a_ray_job_package_is_refused(tmp_path, monkeypatch):
    package = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)
    with pytest.raises(UserError, match="relative path inside a Ray job lands in Ray's temporary package folder"):
        storage.location("releases/cub200")
    assert storage.location("/data/releases/cub200") == "/data/releases/cub200"
    assert storage.location("s3://bucket/releases/cub200") == "s3://bucket/releases/cub200"
    monkeypatch.chdir(tmp_path)
    assert storage.location("releases/cub200") == str(tmp_path / "releases" / "cub200")


def test_a_run_folder_must_be_local(capsys):
    from trainer.train import run_training

    with pytest.raises(UserError, match="the run folder must be a local path"):
        run_training(None, "s3://bucket/runs/r50")

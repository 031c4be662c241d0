"""`tsd run` and `tsd status` on one tiny job (the small demo's images, ingested by the run itself;
the tiny teacher; mixup mixes, no diffusion): a first run makes every stage, a second reuses every
one, a changed probe setting makes the probe and the shards stale (status says what changed), and a
run redoes them. One job for the whole module: each `tsd run` with shards to make costs seconds."""
from __future__ import annotations

import io
import json
import re
from contextlib import redirect_stdout

import pytest
import yaml

from pipeline.cli import main
from pipeline.contract.layout import MANIFEST

STAGES = ["ingest", "probe", "plan", "generate", "release", "verify"]


def lines_of(capsys) -> dict:
    """{stage: the rest of its line} of what a `tsd run` or `tsd status` printed."""
    return stage_lines(capsys.readouterr().out)


def write_job(path, small_job, tmp, epochs: int):
    """The small demo job (3 of its classes), on its source images (ingested by `tsd run` into tmp/ingest), mixup mixes."""
    job = yaml.safe_load(open(small_job["job_path"]))
    job["data"]["source"] = str(small_job["root"] / "work" / "source")
    job["data"]["index"] = str(tmp / "ingest" / "index.parquet")
    job["data"]["classes"] = ["circle", "square", "triangle"]   # 3 of the 8: fewer shards to make
    job["generator"] = {"kind": "mixup", "size": 64}
    job["probe"]["epochs"] = epochs
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="module")
def job(small_job, ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run-status")
    return write_job(tmp / "job.yaml", small_job, tmp, epochs=20), tmp / "rel", small_job, tmp


@pytest.fixture(scope="module")
def first_runs(job):
    """What the first `tsd run` printed (every stage ran), then a second (every stage reused)."""
    job_file, out, _, _ = job
    printed = []
    for _ in range(2):
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            assert main(["run", str(job_file), "--out", str(out)]) == 0
        printed.append(buffer.getvalue())
    return printed


def stage_lines(text: str) -> dict:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*(\w+)[: ]\s*(.*)$", text, re.M) if m.group(1) in STAGES}


def test_a_first_run_makes_every_stage_and_a_second_reuses_every_one(first_runs, job):
    _, out, _, _ = job
    first, second = (stage_lines(t) for t in first_runs)
    assert list(first) == STAGES and list(second) == STAGES
    assert first["ingest"].startswith("ran (no index of ") and "kept 128, rejected 0; 8 classes" in first["ingest"]
    assert first["probe"].startswith("ran (not run yet): teacher val top-1 ")
    assert first["plan"].startswith("ran (not run yet): ")
    assert re.match(r"\d+ shards made, 0 already done, \d+ samples, 0 failed samples, [\d.]+s$", first["generate"])
    assert first["release"].startswith("ran (no manifest yet): real/train ")
    assert first["verify"] == "ran (not verified by `tsd run` yet): OK"
    for stage in STAGES:
        assert second[stage].startswith("reused ("), (stage, second[stage])
    assert second["probe"] == "reused (head matches config and index)"
    n = len(json.loads((out / MANIFEST).read_text())["shards"])
    assert second["generate"] == f"reused ({n} shards, every shard made by the current head, weights and plan)"
    assert second["release"] == f"reused (manifest matches the shards, {n} shards)"


def test_status_says_done_then_stale_after_a_probe_change_and_run_redoes_it(first_runs, job, capsys):
    job_file, out, small_job, tmp = job
    n = len(json.loads((out / MANIFEST).read_text())["shards"])
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    status = lines_of(capsys)
    assert {s: line.split()[0] for s, line in status.items()} == {s: "done" for s in STAGES}
    assert status["generate"].endswith(f"{n}/{n} shards done")

    write_job(job_file, small_job, tmp, epochs=21)   # the user edits the manifest: another probe setting
    assert main(["status", str(out)]) == 0
    status = lines_of(capsys)
    assert status["probe"] == "stale  changed: probe.*"
    assert status["plan"].startswith("done")                  # the plan does not depend on the probe
    assert status["generate"] == (f"stale  the probe is stale: the {n} shard(s) labelled by the current head "
                                  f"are redone with the new one, {n}/{n} shards done")
    assert status["release"].startswith("stale") and status["verify"].startswith("stale")

    assert main(["run", str(job_file), "--out", str(out)]) == 0
    ran = lines_of(capsys)
    assert ran["probe"].startswith("ran (stale: changed: probe.*): teacher val top-1 ")
    assert ran["plan"].startswith("reused (")
    assert f"{n} shards made, 0 already done, {n} redone (stale: head sha256 differs: {n})" in ran["generate"]
    assert ran["release"].startswith("ran (") and ran["verify"].startswith("ran (")

    assert main(["status", str(out)]) == 0
    assert {s: line.split()[0] for s, line in lines_of(capsys).items()} == {s: "done" for s in STAGES}


def test_a_failing_stage_ends_the_run_with_the_command_that_continues(tmp_path, small_job, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    job_file = write_job(tmp_path / "job.yaml", small_job, tmp_path, epochs=20)
    doc = yaml.safe_load(job_file.read_text())
    doc["data"]["source"] = str(empty)
    job_file.write_text(yaml.safe_dump(doc))
    assert main(["run", str(job_file), "--out", str(tmp_path / "rel"), "--set", "seed=1"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"tsd run: error: ingest: {empty}: no usable image")
    assert err[0].endswith(f"; continue with: tsd run {job_file} --out {tmp_path / 'rel'} --set seed=1")
    assert "probe" not in captured.out

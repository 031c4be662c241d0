"""Trackers (`runtime.loggers`): a run logs to a real MLflow server on loopback (SQLite store), is
killed and resumed into the same MLflow run with every step once; an unreachable server is one line
at start-up; W&B in offline mode writes its run into the run folder."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from paths import REPO
from trainer_data import kill_after_checkpoint, read_log, run_training, train_command, trainer_env, write_config

pytestmark = pytest.mark.slow


def wandb_records(path):
    """The protobuf records of a W&B run file: a ':W&B' header (7 bytes), then LevelDB-log records in
    32 KiB blocks (4-byte CRC, 2-byte length, 1-byte type: full, first, middle, last). wandb ships no
    Python reader of it since its core moved to Go."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:          # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a SQLite store; stopped by its PID (its own process group)."""
    pytest.importorskip("mlflow", reason="needs mlflow (pip install 'tsdistill[mlflow]')")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def test_a_killed_run_resumes_into_the_same_mlflow_run_with_every_step_once(tmp_path, release, mlflow_server):
    from mlflow.tracking import MlflowClient

    experiment = f"kill-resume-{tmp_path.name}"
    config = write_config(tmp_path / "train.yaml", release,
                          runtime={"device": "cpu", "seed": 0, "checkpoint_every": 3, "log_every": 1,
                                   "loggers": ["tensorboard", "mlflow"], "mlflow_uri": mlflow_server,
                                   "experiment": experiment, "tags": {"purpose": "test"}})
    out = tmp_path / "run"
    # killed two steps after the first checkpoint: steps 4-5 are in MLflow already, and are trained again
    kill_after_checkpoint(config, out)
    run_id = json.loads((out / "tracker.json").read_text())["mlflow"]
    run_training(config, out, "--resume")
    assert json.loads((out / "tracker.json").read_text())["mlflow"] == run_id

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]                    # one MLflow run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["purpose"] == "test"
    entries = read_log(out)
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [e["step"] for e in entries] == list(range(1, 19))   # every step once
    assert {m.step: m.value for m in history} == pytest.approx({e["step"]: e["loss"] for e in entries}, rel=1e-6)
    val = [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]
    assert sorted(m.step for m in client.get_metric_history(run_id, "val/top1")) == [e["step"] for e in val]
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["loss.mode"] == "distill"
    assert json.loads(run.data.params["runtime.loggers"]) == ["tensorboard", "mlflow"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["final/top1"] == pytest.approx(metrics["val"]["top1"])
    assert {a.path for a in client.list_artifacts(run_id)} >= {"metrics.json", "student.safetensors", "student.json"}


def test_an_unreachable_mlflow_server_is_one_line_at_start_up(tmp_path, release):
    pytest.importorskip("mlflow", reason="needs mlflow (pip install 'tsdistill[mlflow]')")
    uri = f"http://127.0.0.1:{free_port()}"      # nothing listens there
    config = write_config(tmp_path / "train.yaml", release,
                          runtime={"device": "cpu", "loggers": ["mlflow"], "mlflow_uri": uri})
    proc = subprocess.run(train_command(config, tmp_path / "run"), env=trainer_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    assert uri in lines[0] and "cannot be reached" in lines[0]
    assert not (tmp_path / "run" / "log.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_wandb_offline_run_is_written_to_the_run_folder(tmp_path, release):
    pytest.importorskip("wandb", reason="needs wandb (pip install 'tsdistill[wandb]')")
    config = write_config(tmp_path / "train.yaml", release,
                          runtime={"device": "cpu", "log_every": 1, "loggers": ["wandb"], "experiment": "tsd-test",
                                   # what tsd compare sets: W&B groups the runs of one compare
                                   "tags": {"compare": "cmp", "row": "kd", "seed": "1"}})
    env = dict(trainer_env(), WANDB_MODE="offline", WANDB_SILENT="true")
    out = tmp_path / "run"
    proc = subprocess.run(train_command(config, out), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = json.loads((out / "tracker.json").read_text())["wandb"]
    folders = list((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 1
    steps, config_keys, summary, group, tags = [], set(), {}, None, []
    for record in wandb_records(folders[0] / f"run-{run_id}.wandb"):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            if "train/loss" in items:
                steps.append(int(items["_step"]))
        elif kind == "run":
            config_keys |= {i.key for i in record.run.config.update}
            group, tags = record.run.run_group, list(record.run.tags)
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
    assert steps == [e["step"] for e in read_log(out)]
    assert {"optim", "loss", "runtime"} <= config_keys
    assert group == "cmp" and sorted(tags) == ["compare:cmp", "row:kd", "seed:1"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["final/top1"] == pytest.approx(metrics["val"]["top1"])

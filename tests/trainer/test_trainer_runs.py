"""Training runs on a real release, on the CPU: distillation and finetuning learn, a killed run
resumes to the same per-step losses, DDP ranks run the same steps, checkpoints load without
pickle, the trainer never imports the heavy side, `tsd eval` and `tsd bench train` work."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from argparse import Namespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from paths import REPO
from trainer_data import (kill_after_checkpoint, read_log, run_training, train_command, trainer_env, wait_for_steps,
                          write_config)

from pipeline import cli
from trainer import evaluate, runfolder

pytestmark = pytest.mark.slow
HEAVY = ("ray", "diffusers", "transformers")
UMASK = os.umask(0o022)
os.umask(UMASK)


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory, release):
    """An uninterrupted distillation run (KD on real + mix), as a subprocess: the reference."""
    root = tmp_path_factory.mktemp("distill")
    config = write_config(root / "train.yaml", release)
    run_training(config, root / "run")
    return config, root / "run"


def test_distillation_learns(distill_run):
    _, run = distill_run
    log = read_log(run)
    assert [e["step"] for e in log] == list(range(1, 19))            # 3 epochs of ceil(128 real / 24 per step)
    first, last = sum(e["loss"] for e in log[:3]) / 3, sum(e["loss"] for e in log[-3:]) / 3
    assert last < 0.3 * first
    assert all(e["kd"] > 0 and e["skipped"] == 0 for e in log)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["n"] == 64 and metrics["val"]["top1"] >= 0.7   # chance is 0.25
    assert metrics["val"]["agreement"] >= 0.7
    info = json.loads((run / "student.json").read_text())
    assert info["arch"] == "resnet10t" and info["num_classes"] == 4 and info["img_size"] == 32
    assert info["classes"] == [f"colour-{i}" for i in range(4)] and len(info["mean"]) == 3
    assert list((run / "tb").iterdir())                                # TensorBoard events


def test_validation_every_epoch_leaves_the_training_unchanged(tmp_path, distill_run):
    config, reference = distill_run
    val = [json.loads(line) for line in (reference / "val.jsonl").read_text().splitlines()]
    assert [(e["step"], e["epoch"], e["images_seen"]) for e in val] == [(6, 1, 192), (12, 2, 384), (18, 3, 576)]
    assert all(e["n"] == 64 and 0 <= e["top1"] <= 1 and "agreement" in e for e in val)
    assert val[-1]["top1"] == json.loads((reference / "metrics.json").read_text())["val"]["top1"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(reference / "tb")).Reload()
    assert [e.step for e in events.Scalars("val/top1")] == [6, 12, 18]
    run_training(config, tmp_path / "run", "--set", "runtime.eval_every=0")   # validation at the end only
    keys = ("step", "epoch", "loss", "ce", "kd", "lr", "skipped")
    assert [[e[k] for k in keys] for e in read_log(tmp_path / "run")] == [[e[k] for k in keys] for e in read_log(reference)]
    assert len((tmp_path / "run" / "val.jsonl").read_text().splitlines()) == 1


def test_checkpoints_are_safetensors_and_a_weights_only_state(distill_run):
    _, run = distill_run
    folders = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert folders == ["step-00000018"]           # every 3 steps, the last 2 kept; finished: runtime.keep_checkpoints
    final = run / "checkpoints" / "step-00000018"
    assert sorted(p.name for p in final.iterdir()) == ["checksums.json", "model.safetensors", "state.pt"]
    sums = json.loads((final / "checksums.json").read_text())
    assert sums["state.pt"] == hashlib.sha256((final / "state.pt").read_bytes()).hexdigest()
    for f in [*final.iterdir(), run / "student.safetensors", run / "log.jsonl", run / "metrics.json"]:
        assert f.stat().st_mode & 0o777 == 0o666 & ~UMASK, f    # what a plain open() makes: 0644
    weights = load_file(str(final / "model.safetensors"))
    student = load_file(str(run / "student.safetensors"))
    assert weights.keys() == student.keys() and all(torch.equal(weights[k], student[k]) for k in weights)
    state = torch.load(final / "state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batch_in_epoch"], state["steps_per_epoch"]) == (18, 3, 0, 6)
    assert state["optimizer"]["state"] and state["schedule"]["name"] == "warmup-cosine"
    assert {"torch", "numpy", "python", "cuda"} <= state["ranks"][0]["rng"].keys()


def test_killed_run_resumes_to_the_same_losses(tmp_path, distill_run):
    config, reference = distill_run
    out = tmp_path / "run"
    # kill two steps after the first checkpoint: the resume must also drop those log lines
    kill_after_checkpoint(config, out)
    assert len(read_log(out)) < 12
    run_training(config, out, "--resume")
    keys = ("step", "epoch", "loss", "ce", "kd", "lr", "skipped")
    assert [[e[k] for k in keys] for e in read_log(out)] == [[e[k] for k in keys] for e in read_log(reference)]
    resumed, uninterrupted = load_file(str(out / "student.safetensors")), load_file(str(reference / "student.safetensors"))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_sigterm_checkpoints_then_a_corrupt_latest_falls_back_and_resumes_exactly(tmp_path, distill_run):
    """SIGTERM: a checkpoint at the next step boundary, exit 143. A second trainer on the folder is
    refused while the first runs. The SIGTERM checkpoint then damaged: resume names it, falls back
    to the one before, and still ends with the uninterrupted run's losses and weights."""
    config, reference = distill_run
    out = tmp_path / "run"
    proc = subprocess.Popen(train_command(config, out), env=trainer_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_steps(proc, out, 4)
    proc.send_signal(signal.SIGSTOP)   # holds its lock, makes no progress while the second one tries
    try:
        second = subprocess.run(train_command(config, out, "--resume"), env=trainer_env(), cwd=REPO,
                                capture_output=True, text=True, timeout=120)
    finally:
        proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith(f"tsd train: error: {out}: another trainer is running in this folder (pid {proc.pid} "
                               f"on {os.uname().nodename}, since ")
    assert lines[0].endswith("wait for it to end, stop it, or use another --out")
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped = [line for line in err.splitlines() if line.startswith("tsd train: stopped by SIGTERM")]
    assert len(stopped) == 1 and "--resume" in stopped[0] and "Traceback" not in err
    step = int(stopped[0].split("at step ")[1].split(";")[0])
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints[-1] == f"step-{step:08d}" and 4 <= step < 18, (step, checkpoints)
    assert not (out / "train.lock").exists() and not (out / "metrics.json").exists()

    # a folder holding a run: refused without --resume
    refused = subprocess.run(train_command(config, out), env=trainer_env(), cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    held = ", ".join(runfolder.run_files(out))     # val.jsonl only when an epoch ended before the stop
    assert held.startswith("log.jsonl") and "checkpoints" in held
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"tsd train: error: {out}: already holds a run ({held}); use --resume to continue it, --overwrite to "
        "replace it, or another --out"]

    latest = out / "checkpoints" / f"step-{step:08d}"
    state = latest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    resumed = run_training(config, out, "--resume")
    warnings = [line for line in resumed.stderr.splitlines() if "corrupt checkpoint" in line]
    assert warnings == [f"warning: corrupt checkpoint: {latest}: state.pt does not match its checksum (truncated or "
                        "damaged); using the one before"]
    assert (out / "checkpoints" / f"corrupt-step-{step:08d}").is_dir()
    keys = ("step", "epoch", "loss", "ce", "kd", "lr", "skipped")
    assert [[e[k] for k in keys] for e in read_log(out)] == [[e[k] for k in keys] for e in read_log(reference)]
    got, expected = load_file(str(out / "student.safetensors")), load_file(str(reference / "student.safetensors"))
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_finetune_baseline_and_no_heavy_imports(tmp_path, release):
    """In a fresh interpreter: import the trainer, finetune, and check nothing heavy was imported."""
    config = write_config(tmp_path / "finetune.yaml", release, loss={"mode": "finetune"},
                          data={"workers": 1}, optim={"epochs": 2, "warmup_epochs": 0.5})
    script = textwrap.dedent(f"""
        import json, sys
        import trainer.train, trainer.data, trainer.evaluate, trainer.bench
        from trainer.config import load_config
        config, releases = load_config({str(config)!r})
        metrics = trainer.train.run_training(config, {str(tmp_path / 'run')!r}, releases=releases)
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})
        print(json.dumps({{"heavy": heavy, "metrics": metrics}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=trainer_env(), cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["metrics"]["train"]["mode"] == "finetune" and result["metrics"]["val"]["top1"] >= 0.6
    log = read_log(tmp_path / "run")
    assert len(log) == 8 and all(e["loss"] == e["ce"] for e in log)  # alpha = 0: CE only


def test_feature_distillation_on_topk_logits(tmp_path, rich_release, single_thread):
    from trainer.config import load_config
    from trainer.train import run_training as run

    config, releases = load_config(write_config(
        tmp_path / "t.yaml", rich_release, loss={"feature_weight": 0.5},
        data={"batch_size": 16, "workers": 0}, optim={"epochs": 2}, runtime={"checkpoint_every": 0}))
    metrics = run(config, tmp_path / "run", releases=releases)
    log = read_log(tmp_path / "run")
    assert all("feat" in e for e in log) and log[-1]["feat"] < log[0]["feat"]
    assert metrics["val"]["top5"] == 1.0                                # 5 classes: top-5 is everything
    final = tmp_path / "run" / "checkpoints" / "step-00000014"         # 2 epochs of ceil(80 / 12) steps
    assert load_file(str(final / "projector.safetensors"))["weight"].shape == (6, 512)


def test_ddp_two_ranks_run_the_same_steps(tmp_path, release):
    config = write_config(tmp_path / "ddp.yaml", release, data={"workers": 0},
                          optim={"epochs": 2}, runtime={"log_every": 3, "checkpoint_every": 0})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *train_command(config, tmp_path / "run")[1:]],
                          env=trainer_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 2 epochs of ceil(128 real / (2 ranks x 12 real per rank)) steps
    assert "[rank 0/2] done: 12 steps" in proc.stdout and "[rank 1/2] done: 12 steps" in proc.stdout
    assert [e["step"] for e in read_log(tmp_path / "run")] == [3, 6, 9, 12]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["world"] == 2 and metrics["val"]["n"] == 64   # val shards split, counts summed


def test_eval_command_reproduces_the_run_metrics(tmp_path, distill_run, release, capsys, single_thread):
    _, run = distill_run
    args = Namespace(ckpt=str(run), release=str(release), json=str(tmp_path / "m.json"), out=str(tmp_path / "eval"),
                     predictions=str(tmp_path / "p.jsonl"), batch_size=32, workers=0, device="cpu", precision="fp32")
    assert evaluate.run(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert "top1" in line and "agreement" in line
    metrics = json.loads((tmp_path / "m.json").read_text())
    # per-class accuracy and the confusion matrix, consistent with the overall top-1
    per_class = metrics["per_class"]
    assert [r["class"] for r in per_class] == [f"colour-{i}" for i in range(4)] and sum(r["n"] for r in per_class) == 64
    assert sum(r["top1"] * r["n"] for r in per_class) == pytest.approx(metrics["top1"] * 64)
    assert (tmp_path / "eval" / "per_class.csv").read_text().splitlines()[0] == "class,n,top1,teacher_top1"
    with Image.open(tmp_path / "eval" / "confusion.png") as im:
        assert im.format == "PNG" and im.width > 400
    assert metrics["top1"] == json.loads((run / "metrics.json").read_text())["val"]["top1"] and metrics["n"] == 64
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 64
    # `tsd eval CKPT RELEASE --json F` on a student file, every other flag at its default
    assert cli.main(["eval", str(run / "student.safetensors"), str(release), "--json", str(tmp_path / "n.json"),
                     "--device", "cpu", "--workers", "0"]) == 0
    assert json.loads((tmp_path / "n.json").read_text())["top1"] == metrics["top1"]


def test_bench_train_prints_both_rates(tmp_path, capsys, single_thread):
    """`tsd bench train` on a temporary synthetic release of real JPEG shards."""
    assert cli.main(["bench", "train", "--arch", "resnet10t", "--img-size", "32", "--batch-size", "16", "--epochs", "3",
                            "--warmup", "1", "--workers", "2", "--precision", "fp32", "--device", "cpu",
                            "--images", "40", "--store-size", "40", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "from memory epoch 3" in out and "from shards epoch 3" in out and "ratio shards/memory" in out
    assert "peak resident memory" in out
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["epochs"] == 3 and result["steps_per_epoch"] == 3
    assert result["memory_images_per_s"] > 0 and result["shards_images_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["shards_images_per_s"] / result["memory_images_per_s"])
    assert len(result["shards_epoch_s"]) == 3 and len(result["between_epochs_s"]) == 2
    assert 0 < result["peak_rss_gib"]["process"] < 8


def test_bench_train_defaults_are_sized_by_device():
    from trainer.bench import DEFAULTS, with_defaults

    args = Namespace(arch=None, img_size=None, batch_size=64, epochs=None, warmup=None, workers=None,
                              images=None, store_size=None)
    cpu = with_defaults(args, torch.device("cpu"))
    assert (cpu.arch, cpu.img_size, cpu.batch_size, cpu.epochs) == ("resnet18", 64, 64, 3)   # the given value kept
    assert with_defaults(args, torch.device("cuda")).img_size == DEFAULTS["cuda"]["img_size"] == 224


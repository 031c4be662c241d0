"""The training budget and `tsd compare`, at a tiny size on synthetic releases (seconds).

- `optim.steps` is the budget: a run stops there, inside an epoch too, states the steps and images it
  read, and resumes exactly from a checkpoint inside that last, shortened epoch;
- `tsd compare` runs every row × seed at one budget (same steps, same real images), writes
  results.json / results.md / results.png, reuses finished runs, and a killed compare, rerun, ends
  with exactly the results of an uninterrupted one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file
from paths import MANIFESTS, REPO
from trainer_data import config_dict, read_log, trainer_env, write_compare

from pipeline.contract.configlib import ConfigError, build
from pipeline.contract.layout import MANIFEST
from trainer import compare
from trainer.config import TrainConfig, check_releases
from trainer.synthetic import write_release
from trainer.train import run_training


@pytest.fixture(scope="module")
def cutmix_release(tmp_path_factory, release):
    """Mixes of another generator for the `release` fixture's task: same seed, parents and teacher,
    no real shards (what `generator.kinds` writes under generators/<kind>)."""
    return write_release(tmp_path_factory.mktemp("cutmix"), classes=4, train_per_class=32, val_per_class=16,
                         mixes=64, views=3, store_size=40, shard_size=32, generator="cutmix", real_shards=False)


def _train(release_path, out, **sections):
    config = build(TrainConfig, config_dict(release_path, **sections))
    return run_training(config, out, releases=check_releases(config))


# -- the budget ---------------------------------------------------------------------------------
def test_steps_budget_ends_inside_an_epoch_and_resumes_exactly(tmp_path, release, single_thread):
    """6 steps per epoch (128 real / 24 per batch): a budget of 8 steps ends 2 steps into epoch 1."""
    sections = dict(data={"workers": 1}, optim={"steps": 8, "warmup_epochs": 0.5},
                    runtime={"device": "cpu", "seed": 0, "checkpoint_every": 7, "log_every": 1,
                             "keep_checkpoints": 2})   # step 7's too: the resume below starts there
    metrics = _train(release, tmp_path / "run", **sections)
    log = read_log(tmp_path / "run")
    assert [e["step"] for e in log] == list(range(1, 9)) and [e["epoch"] for e in log][-3:] == [0, 1, 1]
    assert metrics["train"]["steps"] == 8 and metrics["train"]["epochs"] == round(8 / 6, 4)
    assert metrics["train"]["budget"] == {"steps": 8, "real_images": 8 * 24, "mix_images": 8 * 8}
    assert log[-1]["lr"] < log[3]["lr"]  # the cosine runs to the budget's end

    # as if killed after step 7's checkpoint (inside the shortened last epoch): resume gives the same run
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "run", cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000008")
    for name in ("metrics.json", "student.safetensors", "student.json"):
        (cut / name).unlink()
    config = build(TrainConfig, config_dict(release, **sections))
    run_training(config, cut, resume=True, releases=check_releases(config))
    keys = ("step", "epoch", "loss", "ce", "kd", "lr")
    assert [[e[k] for k in keys] for e in read_log(cut)] == [[e[k] for k in keys] for e in log]
    a, b = load_file(str(cut / "student.safetensors")), load_file(str(tmp_path / "run" / "student.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_budget_errors(tmp_path, release):
    with pytest.raises(ConfigError, match="optim.steps: must be >= 1, got 0"):
        build(TrainConfig, config_dict(release, optim={"steps": 0}))
    with pytest.raises(ConfigError, match=r"optim.warmup_epochs: 1.0 epochs are 6 steps, more than the 4 of optim"):
        _train(release, tmp_path / "run", optim={"steps": 4, "warmup_epochs": 1})


# -- tsd compare --------------------------------------------------------------------------------
ROWS = ["finetune", "kd", "kd+mixup", "kd+cutmix"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory, release, cutmix_release):
    """An uninterrupted `tsd compare` in a subprocess (one compute thread: the reference of the kill test)."""
    root = tmp_path_factory.mktemp("compare")
    config = write_compare(root / "compare.yaml", release, cutmix_release)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "compare", str(config), "--out", str(root / "out")],
                          env=trainer_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return config, root / "out", proc.stdout


def test_compare_runs_every_row_at_one_budget(compared):
    _, out, stdout = compared
    results = json.loads((out / compare.RESULTS_JSON).read_text())
    assert [r["id"] for r in results["rows"]] == ROWS
    assert results["budget"] == {"steps": 4, "real_per_step": 8, "mix_per_step": 8, "real_images": 32,
                                 "real_train": 128, "epochs_of_real": 0.25}
    for row in results["rows"]:
        assert row["seeds"] == [0, 1] and len(row["val_top1"]) == 2 and row["steps"] == 4 and row["real_images"] == 32
        assert row["mix_images"] == (32 if row["generator"] else 0)
        assert row["mean"] == pytest.approx(sum(row["val_top1"]) / 2)
        assert row["std"] == pytest.approx(abs(row["val_top1"][0] - row["val_top1"][1]) / 2 ** 0.5)
        # two seeds: t_{0.975, 1} = 12.706 (the printed table) times the standard error
        half = 12.7062 * row["std"] / 2 ** 0.5
        assert row["interval"] == pytest.approx([row["mean"] - half, row["mean"] + half], abs=1e-4)
        for run in row["runs"]:
            metrics = json.loads((out / run / "metrics.json").read_text())
            assert metrics["train"]["budget"]["real_images"] == 32 and metrics["train"]["steps"] == 4
    by_id = {r["id"]: r for r in results["rows"]}
    assert by_id["finetune"]["teacher"] is None and by_id["kd+cutmix"]["teacher"] == "probed"
    assert by_id["kd+cutmix"]["generator"] == "cutmix" and by_id["kd"]["mode"] == "kd-real"
    # a row's seeds differ: the seed reaches the data order
    assert read_log(out / "runs" / "kd+mixup" / "seed-0") != read_log(out / "runs" / "kd+mixup" / "seed-1")
    # paired differences: every teacher row against finetune, every mix row against KD, seed by seed
    pairs = [(d["row"], d["against"]) for d in results["differences"]]
    assert pairs == [("kd", "finetune"), ("kd+mixup", "finetune"), ("kd+mixup", "kd"), ("kd+cutmix", "finetune"),
                     ("kd+cutmix", "kd")]
    for d in results["differences"]:
        a, b = by_id[d["row"]]["val_top1"], by_id[d["against"]]["val_top1"]
        assert d["differences"] == pytest.approx([x - y for x, y in zip(a, b)])
        assert d["excludes_zero"] == (d["interval"][0] > 0 or d["interval"][1] < 0)
    table = (out / compare.RESULTS_MD).read_text()
    assert "| KD + CutMix | probed" in table and "±" in table and "4 optimizer steps" in table
    assert "95% interval" in table and "| kd+cutmix | kd |" in table
    assert table.strip() in stdout
    assert (out / compare.RESULTS_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the chart: a bar per row at its mean, and the teacher's line at its own val top-1
    bars = compare.results_figure(results).axes[0]
    assert [p.get_height() for p in bars.patches] == pytest.approx([100 * r["mean"] for r in results["rows"]])
    teacher = by_id["kd"]["teacher_val_top1"]
    lines = [(line.get_label(), list(line.get_ydata())) for line in bars.get_lines() if "teacher" in line.get_label()]
    assert lines == [(f"probed teacher ({100 * teacher:.1f})", [pytest.approx(100 * teacher)] * 2)]


def test_compare_reuses_finished_runs(compared, tmp_path, capsys, single_thread):
    config, out, _ = compared
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("metrics.json")}
    results = compare.run_compare(compare.load_compare(config), copy)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert capsys.readouterr().out.count("(reused)") == 8
    assert results["rows"] == json.loads((out / compare.RESULTS_JSON).read_text())["rows"]


def test_a_changed_config_starts_its_runs_over(compared, tmp_path, single_thread):
    config, out, _ = compared
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = json.loads((copy / "runs" / "kd" / "seed-0" / "metrics.json").read_text())
    changed = compare.load_compare(config, {"rows": ["kd"], "optim": {"lr": 0.01}})
    results = compare.run_compare(changed, copy, log=lambda line: None)
    assert [r["id"] for r in results["rows"]] == ["kd"]
    log = read_log(copy / "runs" / "kd" / "seed-0")
    assert [e["step"] for e in log] == [1, 2, 3, 4] and log[0]["lr"] != read_log(out / "runs" / "kd" / "seed-0")[0]["lr"]
    after = json.loads((copy / "runs" / "kd" / "seed-0" / "metrics.json").read_text())
    assert after["train"]["steps_this_run"] == 4 and before["train"]["steps_this_run"] == 4


def test_ctrl_c_ends_a_compare_in_one_line_and_its_hint_resumes_to_the_same_results(compared, tmp_path):
    """Ctrl-C in a terminal: SIGINT to the whole process group. Exit 130, one line naming the command
    that continues (not a crash), and that command ends with the uninterrupted compare's results."""
    config, reference, _ = compared
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.cli", "compare", str(config), "--out", str(out)]
    proc = subprocess.Popen(command, env=trainer_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    # interrupt inside the third run (kd seed 0), after its first checkpoint
    target = out / "runs" / "kd" / "seed-0" / "checkpoints" / "step-00000002" / "state.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not target.exists():
        time.sleep(0.02)
    assert proc.poll() is None, "the compare ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("tsd compare:")]
    assert len(said) == 1 and "error" not in said[0] and "Traceback" not in err, err[-3000:]
    assert said[0].endswith(f"; continue with: tsd compare {config} --out {out}"), said
    assert not (out / compare.RESULTS_JSON).exists() and not (out / "runs" / "kd" / "seed-0.done.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in (out / "runs" / "finetune").glob("seed-*/metrics.json")}
    assert len(finished) == 2

    proc = subprocess.run(command, env=trainer_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("(reused)") == 2 and "note: --resume" not in proc.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())
    ours = json.loads((out / compare.RESULTS_JSON).read_text())["rows"]
    theirs = json.loads((reference / compare.RESULTS_JSON).read_text())["rows"]
    assert [r["val_top1"] for r in ours] == [r["val_top1"] for r in theirs]
    keys = ("step", "loss", "lr")
    resumed, whole = read_log(out / "runs" / "kd" / "seed-0"), read_log(reference / "runs" / "kd" / "seed-0")
    assert [[e[k] for k in keys] for e in resumed] == [[e[k] for k in keys] for e in whole]


def test_compare_config_errors(tmp_path, release, cutmix_release):
    def plan(**over):
        return compare.row_plan(compare.load_compare(write_compare(tmp_path / "c.yaml", release, cutmix_release,
                                                                   **over)))

    rows, budget = plan(rows=["kd", "cutmix"])
    assert [r.id for r in rows] == ["kd", "kd+cutmix"] and budget.steps == 4
    with pytest.raises(ConfigError, match=r"rows\[0\]: 'sd-mixup' is not a row these releases allow \(have: "
                                          r"cutmix, finetune, kd, mixup\)"):
        plan(rows=["sd-mixup"])
    with pytest.raises(ConfigError, match="seeds: must be >= 1, got 0"):
        plan(seeds=0)
    with pytest.raises(ConfigError, match="data.mix_ratio: 0.0 leaves no mixes in the batches of row kd\\+mixup"):
        plan(data={"mix_ratio": 0.0, "batch_size": 16, "workers": 0})
    # no steps given: epochs passes over the real set at the rows' real images per step
    rows, budget = plan(optim={"epochs": 2, "warmup_epochs": 0.1})
    assert budget.steps == 2 * 128 // 8 and {r.config.optim.steps for r in rows} == {32}
    # a second teacher: its rows again, named after it; the finetune row once
    two = [{"name": "probed", "releases": [str(release), str(cutmix_release)]},
           {"name": "finetuned", "releases": [str(release)]}]
    rows, _ = plan(teachers=two)
    assert [r.id for r in rows] == ["finetune", "kd.probed", "kd+mixup.probed", "kd+cutmix.probed", "kd.finetuned",
                                    "kd+mixup.finetuned"]
    small = write_release(tmp_path / "small", classes=4, train_per_class=8, val_per_class=4, mixes=0)
    with pytest.raises(ConfigError, match=r"teachers\[1\]: its releases hold .* another number of real training"):
        plan(teachers=[two[0], {"name": "other", "releases": [str(small)]}])
    # a release labelled by another teacher cannot join this teacher's rows
    other = tmp_path / "other"
    shutil.copytree(cutmix_release, other)
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["teacher"]["head_sha256"] = "0" * 64
    (other / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"teachers\[0\].releases\[1\]: .* was labelled by another teacher"):
        compare.row_plan(compare.load_compare(write_compare(tmp_path / "c.yaml", release, other)))


# -- the shipped compare configs ----------------------------------------------------------------


def test_compare_demo_is_what_the_demo_compares(tmp_path):
    from pipeline.demo.runner import SIZES, compare_config, compare_teachers

    work = "../demo-out/work"
    models = {"teacher": f"{work}/models/teacher/model.safetensors",
              "student": f"{work}/models/student/model.safetensors", "image-mixer": f"{work}/models/image-mixer",
              "vit-student": f"{work}/models/vit-student/model.safetensors"}
    raw = yaml.safe_load((MANIFESTS / "compare-demo.yaml").read_text())
    assert raw == compare_config("../demo-out", models, SIZES["demo"], compare_teachers("../demo-out"))
    assert [t["name"] for t in raw["teachers"]] == ["probed", "finetuned"]


@pytest.mark.parametrize("name", ["compare-demo", "compare-cub200"])
def test_compare_configs_load(name, tmp_path):
    from recipes import localise, write_yaml

    raw = yaml.safe_load((MANIFESTS / f"{name}.yaml").read_text())
    config = compare.load_compare(write_yaml(tmp_path / "c.yaml", localise(raw, tmp_path)))
    assert config.seeds == 3 and config.teachers[0].name == "probed"
    # the DINOv2 ViT-S/14 student beside the first one; SD-Mixup on fractions of its pool
    assert [s.student.arch for s in config.students] == ["vit_small_patch14_dinov2"]
    assert config.pool_kinds == ["image-mixer"] and 1.0 in config.pool_fractions
    assert all(Path(r).is_absolute() for t in config.teachers for r in t.releases)

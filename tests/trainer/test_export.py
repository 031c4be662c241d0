"""`tsd export`: plain timm (`local-dir:`), onnxruntime and TorchScript, each in a clean process that
imports no tsdistill code, give back the trained student: its weights and classifier exactly, its
logits within 1e-4; config.json carries the preprocessing it was trained with; the card's front
matter has what the Hub reads."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from trainer_data import write_config

from pipeline import cli

CLEAN = "assert not [m for m in sys.modules if m.split('.')[0] in ('pipeline', 'trainer')], 'tsdistill imported'"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, release):  # noqa: F811
    """A short distillation run (in process: 1 epoch on the CPU)."""
    from trainer.config import load_config
    from trainer.train import run_training

    root = tmp_path_factory.mktemp("export-run")
    config, releases = load_config(write_config(root / "train.yaml", release, data={"workers": 0},
                                                optim={"epochs": 1, "warmup_epochs": 0},
                                                runtime={"checkpoint_every": 0, "log_every": 2}))
    run_training(config, root / "run", releases=releases)
    return root / "run"


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "student"
    assert cli.main(["export", str(trained_run), "--out", str(out), "--onnx", "--torchscript"]) == 0
    return out


def clean_python(script: str, cwd: Path) -> dict:
    """Run `script` in a fresh interpreter that cannot import tsdistill (no PYTHONPATH, cwd elsewhere)."""
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-I", "-c", textwrap.dedent(script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def student_logits(run: Path, x: np.ndarray) -> np.ndarray:
    from trainer.students import load_student

    model, _ = load_student(run)
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def test_student_json_records_the_training_preprocessing(trained_run, release):  # noqa: F811
    info = json.loads((trained_run / "student.json").read_text())
    manifest = json.loads((release / "manifest.json").read_text())
    assert info["crop_pct"] == manifest["views"]["eval_crop"]
    assert (info["interpolation"], info["crop_mode"], info["input_size"]) == ("bilinear", "center", [3, 32, 32])


def test_plain_timm_loads_the_trained_student_exactly(exported, trained_run, tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = clean_python(f"""
        import json, sys
        import numpy as np, timm, torch
        from safetensors.torch import save_file
        model = timm.create_model("local-dir:{exported}", pretrained=True).eval()
        {CLEAN}
        save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, "state.safetensors")
        with torch.no_grad():
            np.save("logits.npy", model(torch.from_numpy(np.load("x.npy"))).numpy())
        cfg = timm.data.resolve_data_config(model=model)
        print(json.dumps({{"num_classes": model.num_classes, "labels": model.pretrained_cfg["label_names"],
                          "data": {{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}},
                          "transform": str(timm.data.create_transform(**cfg))}}))
    """, tmp_path)
    trained = load_file(str(trained_run / "student.safetensors"))
    loaded = load_file(str(tmp_path / "state.safetensors"))
    assert loaded.keys() == trained.keys() and all(torch.equal(loaded[k], trained[k]) for k in trained)
    assert loaded["fc.weight"].shape[0] == 4 == result["num_classes"]    # the trained classifier, not a fresh one
    # same weights; logits to float rounding (the clean process runs on one thread)
    assert np.abs(np.load(tmp_path / "logits.npy") - student_logits(trained_run, x)).max() <= 1e-6
    info = json.loads((trained_run / "student.json").read_text())
    assert result["labels"] == info["classes"]
    data = result["data"]
    assert data["input_size"] == [3, 32, 32] and data["crop_pct"] == info["crop_pct"]
    assert data["interpolation"] == "bilinear" and data["crop_mode"] == "center"
    assert np.allclose(data["mean"], info["mean"]) and np.allclose(data["std"], info["std"])
    # timm's eval transform: short side to floor(32 / crop_pct), bilinear antialiased, centre crop
    assert f"Resize(size={int(32 / info['crop_pct'])}, interpolation=bilinear" in result["transform"]
    assert "antialias=True" in result["transform"] and "CenterCrop(size=[32, 32])" in result["transform"]


def test_onnxruntime_and_torchscript_match_torch_in_a_clean_process(exported, trained_run, tmp_path):
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)   # a batch size not exported
    np.save(tmp_path / "x.npy", x)
    clean_python(f"""
        import json, sys
        import numpy as np, onnxruntime, torch
        session = onnxruntime.InferenceSession("{exported / 'model.onnx'}", providers=["CPUExecutionProvider"])
        x = np.load("x.npy")
        np.save("onnx.npy", session.run(None, {{"pixel_values": x}})[0])
        with torch.no_grad():
            np.save("ts.npy", torch.jit.load("{exported / 'model.torchscript.pt'}")(torch.from_numpy(x)).numpy())
        {CLEAN}
        print(json.dumps({{"input": session.get_inputs()[0].shape}}))
    """, tmp_path)
    want = student_logits(trained_run, x)
    assert np.abs(np.load(tmp_path / "onnx.npy") - want).max() <= 1e-4
    assert np.abs(np.load(tmp_path / "ts.npy") - want).max() <= 1e-4


def test_model_card_front_matter(exported, trained_run, release):  # noqa: F811
    text = (exported / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    metrics = json.loads((trained_run / "metrics.json").read_text())["val"]
    manifest = json.loads((release / "manifest.json").read_text())
    assert front["library_name"] == "timm" and front["pipeline_tag"] == "image-classification"
    assert front["datasets"] == [manifest["name"]]
    assert "base_model" not in front        # the run started from random weights
    values = {m["name"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert values == {"student val top-1": round(metrics["top1"], 4),
                      "teacher val top-1": round(metrics["teacher_top1"], 4),
                      "student-teacher top-1 agreement": round(metrics["agreement"], 4)}
    assert 'timm.create_model("local-dir:' in text and "crop_pct" in text
    config = json.loads((exported / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["num_classes"] == 4
    assert config["label_names"] == manifest["classes"]


def test_export_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


def test_the_card_names_the_weights_a_run_started_from_by_their_sha256(tmp_path):
    """A weight file's name says nothing about whose weights it holds: the card names the file and its
    sha256, and a Hub id only when the exporter gives one (--base-model)."""
    import hashlib

    from trainer.export import start_line
    from trainer.students import init_weights

    weights = tmp_path / "resnet10t.c3_in1k.safetensors"
    weights.write_bytes(b"any weights")
    sha = hashlib.sha256(b"any weights").hexdigest()
    start = init_weights(str(weights))
    assert start == {"file": str(weights), "sha256": sha}
    info = {"init_weights": start, "config": {"student": {"weights": str(weights)}}}
    assert start_line(info, None) == f"the weight file `{weights.name}` (sha256 `{sha}`)"
    assert start_line(info, "timm/resnet10t.c3_in1k") == (f"the weight file `{weights.name}` (sha256 `{sha}`, "
                                                          "`timm/resnet10t.c3_in1k` according to the exporter "
                                                          "(--base-model))")
    assert start_line({"init_weights": None, "config": {"student": {"weights": None}}}, None) == "random initialisation"
    older = {"config": {"student": {"weights": str(tmp_path / "gone.safetensors")}}}   # no init_weights, file gone
    assert start_line(older, None) == "the weight file `gone.safetensors` (sha256 unknown (the file is no longer readable))"

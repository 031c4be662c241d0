"""`tsd export` of segmentation students: the folder loads back with the student's own library
(smp's from_pretrained; timm's local-dir plus the dense head beside it) and computes what the student
does, and model.onnx takes any batch and image size (multiples of the patch / output stride),
matching torch under onnxruntime."""
import json

import pytest
import torch
from safetensors.torch import load_file
from trainer_data import SEG_STUDENTS

from pipeline import cli
from pipeline.contract.dense import make_dense_head, patch_grid, upsample_logits
from pipeline.contract.errors import UserError
from trainer.export import export
from trainer.students import build_seg_student, load_student, mean_std, preprocessing, save_student

pytestmark = pytest.mark.slow


def student_run(folder, kind: str):
    """A run folder holding a (random-weight) segmentation student, as `tsd train` leaves it."""
    spec = SEG_STUDENTS[kind]
    torch.manual_seed(0)
    model = build_seg_student(spec["arch"], 3, spec["decoder"], model_kwargs=spec["model_kwargs"],
                              img_size=spec["img_size"])
    for m in model.modules():   # BatchNorm statistics away from their init, so a head lost in export would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    mean, std = mean_std(model)
    save_student(model.eval(), folder, {"arch": spec["arch"], "num_classes": 3, "img_size": spec["img_size"],
                                        "mean": mean, "std": std, **preprocessing(spec["img_size"], mean, std, 0.875),
                                        "classes": ["a", "b", "c"], "model_kwargs": spec["model_kwargs"],
                                        "task": "segmentation", "decoder": spec["decoder"]})
    return folder


def onnx_matches(path, model, shapes):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            want = upsample_logits(model(x), shape[-2:])
        got = torch.as_tensor(session.run(None, {"pixel_values": x.numpy()})[0])
        assert got.shape == (shape[0], 3, *shape[-2:])
        assert torch.allclose(got, want, atol=1e-4), (shape, float((got - want).abs().max()))


def test_an_smp_student_exports_as_an_smp_folder_and_a_dynamic_onnx(tmp_path):
    import segmentation_models_pytorch as smp

    run = student_run(tmp_path / "run", "smp-fpn")
    model, _ = load_student(run)
    model.eval()
    assert cli.main(["export", str(run), "--out", str(tmp_path / "out"), "--onnx"]) == 0
    out = tmp_path / "out"
    loaded = smp.from_pretrained(str(out)).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    info = json.loads((out / "tsdistill.json").read_text())
    assert info["task"] == "segmentation" and info["decoder"] == "FPN" and info["size_multiple"] == 32
    assert info["classes"] == ["a", "b", "c"]
    onnx_matches(out / "model.onnx", model, [(2, 3, 64, 64), (1, 3, 96, 160)])


def test_a_linear_vit_student_exports_as_a_timm_folder_with_its_head_and_a_dynamic_onnx(tmp_path):
    import timm

    run = student_run(tmp_path / "run", "vit-linear")
    model, _ = load_student(run)
    model.eval()
    result = export(run, tmp_path / "out", onnx=True)
    out = tmp_path / "out"
    assert result["files"] == ["config.json", "model.safetensors", "dense_head.safetensors", "tsdistill.json",
                               "model.onnx"] and result["checks"]["onnx"] < 1e-4
    backbone = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    head = make_dense_head(backbone.num_features, 3)
    head.load_state_dict(load_file(str(out / "dense_head.safetensors")))
    head.eval()
    x = torch.randn(2, 3, 42, 56)       # not the training size: the ViT takes any multiple of its patch
    with torch.no_grad():
        assert torch.allclose(head(patch_grid(backbone, x)), model(x), atol=1e-5)
    assert json.loads((out / "tsdistill.json").read_text())["size_multiple"] == 14
    onnx_matches(out / "model.onnx", model, [(3, 3, 28, 28), (1, 3, 70, 42)])


def test_torchscript_is_refused_for_a_segmentation_student(tmp_path):
    run = student_run(tmp_path / "run", "vit-linear")
    with pytest.raises(UserError, match="--torchscript"):
        export(run, tmp_path / "out", torchscript=True)


@pytest.mark.parametrize("kind", ["smp-fpn", "vit-linear"])
def test_predict_reads_the_export_folder_as_it_reads_the_run(tmp_path, kind, capsys):
    """`tsd predict EXPORT` gives the run folder's class maps; a broken export is one line."""
    import numpy as np
    from PIL import Image

    run = student_run(tmp_path / "run", kind)
    assert cli.main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    rng = np.random.default_rng(1)
    for name, shape in (("a.png", (37, 53, 3)), ("b.jpg", (64, 48, 3))):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(tmp_path / name)
    images = [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    for folder in ("run", "out"):
        assert cli.main(["predict", str(tmp_path / folder), *images, "--out", str(tmp_path / f"masks-{folder}")]) == 0
    for name in ("a.png", "b.png"):
        from_run, from_export = (np.asarray(Image.open(tmp_path / f"masks-{f}" / name)) for f in ("run", "out"))
        assert from_run.shape == from_export.shape and (from_run == from_export).mean() > 0.999
    capsys.readouterr()
    (tmp_path / "out" / "config.json").unlink()
    assert cli.main(["predict", str(tmp_path / "out"), *images, "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "config.json: missing from the export folder" in err, err

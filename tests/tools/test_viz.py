"""`tsd viz`: the contact sheet, the PCA figure and the training curves are real, non-blank pictures."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from pipeline.contract.errors import UserError
from pipeline.tools.viz import (GREY, RunCurves, class_colours, loss_terms, plot_curves, plot_mixes, plot_pca,
                                read_log, srgb_to_lab)


def assert_picture(path: Path, min_size: tuple[int, int]) -> None:
    """A PNG at least `min_size` (w, h) with content: varied pixels and many colours."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_size[0] and im.height >= min_size[1], im.size
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 15, "picture looks blank"
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 500, f"only {len(colours)} colours"


def make_run(folder: Path, release_manifest: dict, mode: str, steps: int = 30) -> Path:
    """A run folder as trainer.train leaves it: the student (random weights here), log, val log,
    config and metrics. Distillation batches hold mixes too: twice the steps per epoch of finetuning."""
    from trainer.students import build_student, mean_std, save_student

    folder.mkdir(parents=True)
    model = build_student("resnet10t", release_manifest["num_classes"])
    mean, std = mean_std(model)
    save_student(model, folder, {"arch": "resnet10t", "num_classes": release_manifest["num_classes"],
                                 "img_size": 48, "mean": mean, "std": std, "classes": release_manifest["classes"],
                                 "model_kwargs": {}, "config": {"loss": {"mode": mode}}})
    rng = np.random.default_rng(len(mode))
    spe = 10 if mode == "distill" else 5
    steps = steps if mode == "distill" else steps // 2
    alpha = 0.0 if mode == "finetune" else 0.5
    with open(folder / "log.jsonl", "w") as f:
        for step in range(1, steps + 1):
            ce, kd = 2.0 * np.exp(-step / 12) + 0.1 * rng.random(), 0.5 * np.exp(-step / 20)
            f.write(json.dumps({"step": step, "epoch": step // spe, "loss": (1 - alpha) * ce + alpha * kd, "ce": ce,
                                "kd": kd, "lr": 0.003 * min(1.0, step / 5), "images_seen": 64 * step,
                                "images_per_s": 100.0, "skipped": 0}) + "\n")
    top1 = [0.3, 0.45, 0.5] if mode == "distill" else [0.25, 0.35, 0.4]
    with open(folder / "val.jsonl", "w") as f:
        for e, value in enumerate(top1, 1):
            f.write(json.dumps({"step": e * spe, "epoch": float(e), "images_seen": 64 * e * spe, "n": 40,
                                "top1": value, "agreement": value + 0.1, "teacher_top1": 0.6}) + "\n")
    (folder / "config.yaml").write_text(f"loss: {{mode: {mode}, alpha: 0.5}}\ndata: {{batch_size: 64}}\n")
    (folder / "metrics.json").write_text(json.dumps({"val": {"top1": top1[-1]},
                                                     "train": {"steps_per_epoch": spe, "global_batch": 64}}))
    return folder


@pytest.fixture(scope="module")
def runs(small_release, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    manifest = small_release["manifest"]
    return [make_run(root / mode, manifest, mode) for mode in ("distill", "finetune")]


def test_mixes_contact_sheet(small_release, tmp_path):
    out = plot_mixes(small_release["root"], tmp_path / "sheet" / "mixes.png", rows=4)
    assert_picture(out, (700, 1000))


def test_pca_figure_with_teacher_and_two_students(small_release, runs, tmp_path):
    out = plot_pca(small_release["root"], runs, tmp_path / "pca.png", per_class=8, max_mixes=60, device="cpu")
    assert_picture(out, (1400, 450))


def test_training_curves(runs, tmp_path):
    out = plot_curves(runs, tmp_path / "curves.png")
    assert_picture(out, (1300, 800))
    assert_picture(plot_curves(runs, tmp_path / "by-images.png", x_axis="images"), (1300, 800))


def test_curves_line_runs_up_by_epoch_and_keep_only_their_loss_terms(runs):
    distill, finetune = (RunCurves.read(r) for r in runs)
    assert distill.steps_per_epoch == 2 * finetune.steps_per_epoch
    assert distill.x(distill.entries, "epochs")[-1] == finetune.x(finetune.entries, "epochs")[-1] == 3
    assert distill.x(distill.val, "epochs") == finetune.x(finetune.val, "epochs") == [1, 2, 3]
    assert loss_terms(finetune.config) == ["ce"] and loss_terms(distill.config) == ["ce", "kd"]
    assert loss_terms({"loss": {"mode": "distill", "alpha": 1.0, "feature_weight": 0.1}}) == ["kd", "feat"]


@pytest.mark.parametrize("n", [8, 10, 20, 30])
def test_class_colours_are_distinguishable(n):
    lab = srgb_to_lab(np.array(class_colours(n)))
    distance = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(n) * 1e9
    assert distance.min() > 25                                   # CIELAB ΔE: clearly different colours
    grey = srgb_to_lab(np.array([int(GREY[i:i + 2], 16) / 255 for i in (1, 3, 5)]))
    assert np.linalg.norm(lab - grey, axis=1).min() > 25        # and none near the mixes' grey


def test_curves_skip_a_cut_last_line_but_not_a_bad_middle_one(runs, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = (runs[0] / "log.jsonl").read_text().splitlines()
    (run / "log.jsonl").write_text("\n".join(lines[:5] + [lines[5][:20]]) + "\n")
    entries, metrics = read_log(run)
    assert len(entries) == 5 and metrics is None
    (run / "log.jsonl").write_text("\n".join(lines[:2] + ["{oops"] + lines[2:5]) + "\n")
    with pytest.raises(UserError, match=r"log.jsonl:3: not a JSON line"):
        read_log(run)


def test_viz_main_reports_a_missing_run_folder(tmp_path, capsys):
    assert cli.main(["viz", "curves", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    assert "nope/log.jsonl: not found" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_mixes_sheet_needs_the_parents(small_release, tmp_path):
    import pyarrow.parquet as pq

    from pipeline.tools.subset import make_subset

    rows = pq.read_table(Path(small_release["root"]) / "index.parquet").to_pylist()
    only_mixes = make_subset(small_release["root"], [r["uid"] for r in rows if r["kind"] == "mix"][:4], tmp_path / "s")
    assert only_mixes["counts"]["mix/train"] == 4
    with pytest.raises(UserError, match="no mix with both parents"):
        plot_mixes(tmp_path / "s", tmp_path / "x.png")

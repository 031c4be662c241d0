"""`tsd viz`: the contact sheet, the PCA figure and the training curves are real, non-blank pictures."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from pipeline.contract.errors import UserError
from pipeline.tools.viz import plot_curves, plot_mixes, plot_pca, read_log


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
    """A run folder as trainer.train leaves it: the student (random weights here), log and metrics."""
    from trainer.students import build_student, mean_std, save_student

    folder.mkdir(parents=True)
    model = build_student("resnet10t", release_manifest["num_classes"])
    mean, std = mean_std(model)
    save_student(model, folder, {"arch": "resnet10t", "num_classes": release_manifest["num_classes"],
                                 "img_size": 48, "mean": mean, "std": std, "classes": release_manifest["classes"],
                                 "model_kwargs": {}, "config": {"loss": {"mode": mode}}})
    rng = np.random.default_rng(len(mode))
    with open(folder / "log.jsonl", "w") as f:
        for step in range(1, steps + 1):
            ce, kd = 2.0 * np.exp(-step / 12) + 0.1 * rng.random(), 0.5 * np.exp(-step / 20)
            f.write(json.dumps({"step": step, "epoch": step // 10, "loss": 0.5 * ce + 0.5 * kd, "ce": ce, "kd": kd,
                                "lr": 0.003 * min(1.0, step / 5), "images_per_s": 100.0, "skipped": 0}) + "\n")
    (folder / "metrics.json").write_text(json.dumps({"val": {"top1": 0.5 if mode == "distill" else 0.4}}))
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
    assert_picture(out, (1300, 400))


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

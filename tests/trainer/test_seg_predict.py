"""`tsd predict` with a segmentation student: a class map per image at the image's own size, and a
CSV of each image's class shares."""
import csv
import shutil

import numpy as np
import pytest
from PIL import Image
from trainer_data import run_training, write_seg_config

from pipeline import cli


@pytest.fixture(scope="module")
def seg_student(tmp_path_factory, seg_release):
    root = tmp_path_factory.mktemp("seg-predict")
    config = write_seg_config(root / "train.yaml", seg_release, "vit-linear",
                              data={"mix_ratio": 0.25, "batch_size": 16, "workers": 0, "shuffle_buffer": 16},
                              optim={"name": "adamw", "lr": 0.003, "steps": 2, "warmup_epochs": 0.1})
    run_training(config, root / "run")
    return root / "run"


def test_predict_writes_a_class_map_per_image_at_its_size(seg_student, tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    (images / "b").mkdir()
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)).save(images / "a" / "x.png")
    shutil.copy(images / "a" / "x.png", images / "b" / "x.png")        # same stem, another folder
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(images / "y.jpg")
    out = tmp_path / "masks"
    assert cli.main(["predict", str(seg_student), str(images), "--out", str(out)]) == 0
    assert "3 image(s) segmented" in capsys.readouterr().out
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["mask"] for r in rows] == ["x.png", "x-2.png", "y.png"]
    for row in rows:
        mask = np.asarray(Image.open(out / row["mask"]))
        with Image.open(row["image"]) as im:
            assert mask.shape == (im.height, im.width)
        shares = [float(row[c]) for c in list(row)[2:]]
        assert mask.max() < len(shares) and sum(shares) == pytest.approx(1.0, abs=1e-5)
        assert shares == pytest.approx(list(np.bincount(mask.reshape(-1), minlength=len(shares)) / mask.size), abs=1e-6)
    assert np.array_equal(np.asarray(Image.open(out / "x.png")), np.asarray(Image.open(out / "x-2.png")))


def test_predict_refuses_a_csv_for_a_segmentation_student(seg_student, tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "z.png")
    assert cli.main(["predict", str(seg_student), str(tmp_path / "z.png"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "writes a folder of class-map PNGs" in capsys.readouterr().err

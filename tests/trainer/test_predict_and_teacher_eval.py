"""`tsd predict` labels image files as the student was validated, from a run folder and from its
`tsd export` folder alike; `tsd eval teacher` reads the teacher's per-class accuracy and confusion
from the stored logits, the same teacher top-1 the student's run reports."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from trainer_data import config_dict, shard_path

from pipeline import cli
from pipeline.contract.configlib import build
from pipeline.contract.shards import read_shard
from trainer.config import TrainConfig, check_releases
from trainer.data import batches, model_inputs, val_loader
from trainer.release import open_releases
from trainer.samples import Replay
from trainer.students import load_student
from trainer.evaluate import evaluate_checkpoint
from trainer.train import run_training


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, release):
    """A real run of 4 steps (a student.json with the release's eval crop), in this process."""
    out = tmp_path_factory.mktemp("short") / "run"
    config = build(TrainConfig, config_dict(release, optim={"steps": 4, "warmup_epochs": 0.1},
                                            data={"workers": 0}))
    run_training(config, out, releases=check_releases(config))
    return out


def val_images(release, folder) -> dict:
    """The stored bytes of the first val shard's images as files: {file: uid}."""
    folder.mkdir()
    files = {}
    for key, members in read_shard(str(shard_path(release, "real", "val", 0))):
        path = folder / f"{key}.jpg"
        path.write_bytes(members["jpg"])
        files[str(path)] = key
    return files


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def validation_probabilities(run, release) -> dict:
    """{uid: softmax of the student on the trainer's own validation batch} (the val loader, no predict code)."""
    model, info = load_student(run)
    replay = Replay(len(info["classes"]), info["img_size"], seed=0)
    probs = {}
    with torch.no_grad():
        for batch in batches(val_loader(open_releases([str(release)]), 16, 0, replay)):
            x = model_inputs(batch, torch.device("cpu"), info["img_size"], info["mean"], info["std"])
            probs.update(zip(batch["uid"], model.eval()(x).softmax(1).tolist()))
    return probs


def test_predict_matches_the_validation_view_from_a_run_and_its_export(tmp_path, short_run, release, single_thread):
    files = val_images(release, tmp_path / "images")
    metrics, info = evaluate_checkpoint(short_run, str(release), workers=0, device="cpu", predictions=True)
    expected = {r["uid"]: info["classes"][r["pred"]] for r in metrics["predictions"]}
    probs = validation_probabilities(short_run, release)

    assert cli.main(["predict", str(short_run), str(tmp_path / "images"), "--out", str(tmp_path / "run.csv"),
                     "--top-k", "3"]) == 0
    rows = read_rows(tmp_path / "run.csv")
    assert list(rows[0]) == ["image", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    assert sorted(r["image"] for r in rows) == sorted(files)
    # the same view as `tsd eval` (the stored image, the release's eval crop): the same top-1 per image
    assert {files[r["image"]]: r["class_1"] for r in rows} == {files[f]: expected[files[f]] for f in files}
    for r in rows:
        top = [float(r[f"prob_{k}"]) for k in (1, 2, 3)]
        want = sorted(probs[files[r["image"]]], reverse=True)[:3]   # the same pixels: the same probabilities
        assert top == pytest.approx(want, abs=2e-6) and top == sorted(top, reverse=True)

    assert cli.main(["export", str(short_run), "--out", str(tmp_path / "export")]) == 0
    assert cli.main(["predict", str(tmp_path / "export"), *files, "--out", str(tmp_path / "export.csv"),
                     "--top-k", "3"]) == 0
    exported = read_rows(tmp_path / "export.csv")
    assert [r["image"] for r in exported] == list(files)
    by_image = {r["image"]: r for r in rows}
    for r in exported:
        assert [r[f"class_{k}"] for k in (1, 2, 3)] == [by_image[r["image"]][f"class_{k}"] for k in (1, 2, 3)]
        assert [float(r[f"prob_{k}"]) for k in (1, 2, 3)] == pytest.approx(
            [float(by_image[r["image"]][f"prob_{k}"]) for k in (1, 2, 3)], abs=1e-5)


def test_predict_names_a_file_that_is_not_an_image(tmp_path, short_run, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    assert cli.main(["predict", str(short_run), str(bad), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tsd predict: error: {bad}: cannot be read as an image")
    assert not (tmp_path / "p.csv").exists()


def test_eval_teacher_from_the_stored_logits(tmp_path, short_run, release, capsys):
    out = tmp_path / "teacher"
    assert cli.main(["eval", "teacher", str(release), "--out", str(out), "--json", str(tmp_path / "t.json"),
                     "--workers", "0"]) == 0
    teacher = json.loads((tmp_path / "t.json").read_text())
    run_metrics = json.loads((short_run / "metrics.json").read_text())["val"]
    assert teacher["n"] == run_metrics["n"] and teacher["top1"] == pytest.approx(run_metrics["teacher_top1"])
    per_class = teacher["per_class"]
    assert sum(r["top1"] * r["n"] for r in per_class) == pytest.approx(teacher["top1"] * teacher["n"])
    assert (out / "per_class.csv").is_file() and (out / "confusion.png").is_file()
    assert f"teacher on {release}: top1 {teacher['top1']:.4f}" in capsys.readouterr().out
    # beside a student's: its eval writes the teacher's confusion too, and titles its own by the run
    assert cli.main(["eval", str(short_run), str(release), "--device", "cpu", "--workers", "0"]) == 0
    assert (short_run / "eval" / "confusion-teacher.png").is_file()

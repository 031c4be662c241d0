"""Segmentation students trained end to end on a real segmentation release, on the CPU, one run per
student kind (a 1-block DINOv2-shaped ViT with the linear head; smp FPN on resnet10t): the loss falls
and mIoU beats chance, a killed run resumes to the same per-step losses, `tsd eval` writes mIoU,
pixel accuracy, agreement and per_class_iou.csv beside the probe's numbers, and its mIoU matches a
computation written here from the model's predictions (not `pipeline.contract.miou`)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from trainer_data import kill_after_checkpoint, read_log, run_training, shard_samples, write_seg_config

from pipeline import cli
from pipeline.contract.dense import upsample_logits
from pipeline.contract.images import decode_image
from pipeline.contract.masks import decode_mask
from pipeline.contract.tasks import IGNORE_INDEX
from pipeline.contract.views import normalize, view_mask, view_pixels
from trainer.students import load_student

pytestmark = pytest.mark.slow
KINDS = ("vit-linear", "smp-fpn")
SMALL = {"data": {"mix_ratio": 0.25, "batch_size": 16, "workers": 0, "shuffle_buffer": 16},
         "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01, "epochs": 2, "warmup_epochs": 0.5}}


@pytest.fixture(scope="module", params=KINDS)
def seg_run(request, tmp_path_factory, seg_release):
    """An uninterrupted run of each student kind: 2 epochs of 4 steps (12 real + 4 mixes a step)."""
    root = tmp_path_factory.mktemp(f"seg-{request.param}")
    config = write_seg_config(root / "train.yaml", seg_release, request.param, **SMALL)
    run_training(config, root / "run")
    return request.param, config, root / "run"


def test_a_segmentation_student_learns(seg_run):
    kind, _, run = seg_run
    log = read_log(run)
    assert [e["step"] for e in log] == list(range(1, 9))
    assert all(e["ce"] > 0 and e["kd"] > 0 for e in log)
    assert sum(e["loss"] for e in log[-2:]) < 0.8 * sum(e["loss"] for e in log[:2])
    val = json.loads((run / "metrics.json").read_text())["val"]
    assert val["n"] == 16 and len(val["per_class_iou"]) == 3
    assert val["miou"] > 0.4 and val["pixel_acc"] > 0.6 and 0 < val["agreement"] <= 1   # all-background: ~0.2, ~0.55
    assert 0.4 < val["teacher_miou"] <= 1
    lines = [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [4, 8] and lines[-1]["miou"] == val["miou"]
    info = json.loads((run / "student.json").read_text())
    assert info["task"] == "segmentation" and info["decoder"] == {"vit-linear": "linear", "smp-fpn": "FPN"}[kind]


def test_a_killed_segmentation_run_resumes_to_the_same_losses(tmp_path, seg_run):
    _, config, reference = seg_run
    out = tmp_path / "run"
    kill_after_checkpoint(config, out, checkpoint=3, logged=4)
    run_training(config, out, "--resume")
    keys = ("step", "loss", "ce", "kd", "lr")
    assert [[e[k] for k in keys] for e in read_log(out)] == [[e[k] for k in keys] for e in read_log(reference)]
    assert json.loads((out / "metrics.json").read_text())["val"]["miou"] == \
        json.loads((reference / "metrics.json").read_text())["val"]["miou"]


def direct_miou(run, release) -> tuple[float, float, float]:
    """(mIoU, pixel accuracy, agreement) of the run's student on the val views, counted here: IoU per class
    as |pred ∩ truth| / |pred ∪ truth| over the labelled pixels, the mean over classes present in either."""
    model, info = load_student(run)
    model.eval()
    size = info["img_size"]
    preds, truths, teachers = [], [], []
    for members, meta in shard_samples(release, "real", "val").values():
        view = meta.views[0]
        x = normalize(view_pixels(decode_image(members["jpg"]), view, size)[None], info["mean"], info["std"])
        with torch.no_grad():
            preds.append(upsample_logits(model(x), (size, size)).argmax(1)[0].numpy())
        truths.append(view_mask(decode_mask(members["mask.png"]), view, size).numpy())
        dense = np.load(__import__("io").BytesIO(members["dense_logits.npy"])).astype(np.float32)
        teachers.append(upsample_logits(torch.from_numpy(dense[:1]), (size, size)).argmax(1)[0].numpy())
    pred, truth, teacher = np.stack(preds), np.stack(truths), np.stack(teachers)
    labelled = truth != IGNORE_INDEX
    ious = []
    for c in range(3):
        inter = np.sum((pred == c) & (truth == c) & labelled)
        union = np.sum(((pred == c) | (truth == c)) & labelled)
        if union:
            ious.append(inter / union)
    return float(np.mean(ious)), float(np.sum((pred == truth) & labelled) / labelled.sum()), \
        float(np.mean(pred == teacher))


def test_tsd_eval_reports_miou_as_counted_directly(tmp_path, seg_run, seg_release, capsys):
    _, _, run = seg_run
    assert cli.main(["eval", str(run), str(seg_release), "--json", str(tmp_path / "m.json"), "--out",
                     str(tmp_path / "eval"), "--device", "cpu", "--workers", "0", "--batch-size", "5"]) == 0
    said = capsys.readouterr().out
    assert "mIoU" in said and "probe mIoU" in said
    metrics = json.loads((tmp_path / "m.json").read_text())
    miou, pixel_acc, agreement = direct_miou(run, seg_release)
    assert metrics["miou"] == pytest.approx(miou, abs=2e-3)
    assert metrics["pixel_acc"] == pytest.approx(pixel_acc, abs=2e-3)
    assert metrics["agreement"] == pytest.approx(agreement, abs=2e-3)
    probe = json.loads((seg_release / "teacher" / "probe.json").read_text())
    assert metrics["probe"]["val_miou"] == pytest.approx(probe["val_miou"])
    with open(tmp_path / "eval" / "per_class_iou.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["background", "shape-1", "shape-2"]
    assert [float(r["iou"]) for r in rows] == pytest.approx(metrics["per_class_iou"], abs=1e-4)
    # the probe's per-class IoU as the dense probe writes it (val_per_class_iou, by class name)
    assert [float(r["probe_iou"]) for r in rows] == pytest.approx([probe["val_per_class_iou"][r["class"]] for r in rows],
                                                                  abs=1e-4)
    assert all(r["teacher_iou"] for r in rows)


def test_ddp_two_ranks_sum_their_confusion_matrices(tmp_path, seg_release, capsys):
    """Two ranks split the val shards; the mIoU their summed confusion gives is the one a single process
    counts over the whole val set (`tsd eval`)."""
    import subprocess
    import sys

    from paths import REPO
    from trainer_data import train_command, trainer_env

    config = write_seg_config(tmp_path / "ddp.yaml", seg_release, "vit-linear",
                              data={"mix_ratio": 0.25, "batch_size": 16, "workers": 0, "shuffle_buffer": 16},
                              optim={"name": "adamw", "lr": 0.003, "steps": 4, "warmup_epochs": 0.1},
                              runtime={"device": "cpu", "seed": 0, "log_every": 2, "checkpoint_every": 0})
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *train_command(config, tmp_path / "run")[1:]],
                          env=trainer_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[rank 0/2] done: 4 steps" in proc.stdout and "[rank 1/2] done: 4 steps" in proc.stdout
    val = json.loads((tmp_path / "run" / "metrics.json").read_text())["val"]
    assert val["n"] == 16
    assert cli.main(["eval", str(tmp_path / "run"), str(seg_release), "--json", str(tmp_path / "e.json"),
                     "--workers", "0", "--device", "cpu", "--precision", "fp32"]) == 0
    single = json.loads((tmp_path / "e.json").read_text())
    # every labelled pixel counted once across the ranks; the maps themselves may differ by a few pixels
    # (each rank's batches are other compositions: CPU kernels round a batch's sums differently)
    assert single["pixels"] == val["pixels"] and single["miou"] == pytest.approx(val["miou"], abs=5e-3)

"""Segmentation generation end to end at tiny size: ingest of the procedural scenes, probe (dense head
on frozen patch tokens), plan, the shard worker and the Ray pool (masks on real samples, dense teacher
logits per view, mixes without masks), release, verify, the dry run, and the dataset card loaded by
`datasets`. The release tools on a segmentation release: tests/tools/test_seg_release_tools.py."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.contract.configlib import ConfigError
from pipeline.contract.dense import upsample_logits
from pipeline.contract.errors import UserError
from pipeline.contract.layout import CARD, HEAD_FILE, INDEX, MANIFEST, PROBE_METRICS, TEACHER_DIR
from pipeline.contract.masks import decode_mask
from pipeline.contract.samples import (M_DENSE_LOGITS, M_DENSE_REST, M_DENSE_TOPK_IDX, M_FEATURES, M_JSON, M_MASK,
                                       SampleMeta, decode_dense, dense_summary, npy_load)
from pipeline.contract.tasks import IGNORE_INDEX
from pipeline.models.teacher import DENSE_LINEAR, load_teacher, read_adaptation
from pipeline.stages.jobdir import plan_path
from pipeline.stages.plan import plan_stage, read_plan, write_plan
from pipeline.stages.worker import ShardWorker
from pipeline.tools.verify import verify_release
from seg_data import SEG_CLASSES, SEG_NUM_CLASSES, build_seg_release, shard_samples as samples


@pytest.fixture(scope="module")
def seg_release(tmp_path_factory):
    return build_seg_release(tmp_path_factory.mktemp("seg"))


def test_probe_fits_a_dense_head_and_reports_miou(seg_release):
    out, probe = seg_release["out"], seg_release["probe"]
    assert json.loads((out / PROBE_METRICS).read_text()) == probe
    assert probe["task"] == "segmentation" and probe["head"] == DENSE_LINEAR and probe["grid"] == [4, 4]
    assert set(probe["val_per_class_iou"]) == set(SEG_CLASSES) and probe["num_classes"] == SEG_NUM_CLASSES
    assert 0 < probe["val_pixels"] and 0 <= probe["val_miou"] <= 1 and 0 <= probe["val_pixel_acc"] <= 1
    # fit on a random-weight backbone's tokens: far above an untrained head (about 1 in 5 pixels right)
    assert probe["train_pixel_acc"] > 0.6
    _, meta, tuned = read_adaptation(out / HEAD_FILE)
    assert meta["head"] == DENSE_LINEAR and meta["task"] == "segmentation" and meta["in_dim"] == 192 and not tuned
    teacher = load_teacher(seg_release["job"].teacher, out / HEAD_FILE)
    logits, feats = teacher(torch.zeros(2, 3, 56, 56))
    assert teacher.dense and logits.shape == (2, SEG_NUM_CLASSES, 4, 4) and feats.shape == (2, 384)
    assert upsample_logits(logits, (56, 56)).shape == (2, SEG_NUM_CLASSES, 56, 56)
    # what tsd run, tsd probe and the demo print of it: the task's headline (tsd run once asked for val_top1)
    from pipeline.stages.probe import teacher_line

    assert teacher_line(probe) == f"teacher val mIoU {probe['val_miou']:.3f}"
    assert teacher_line({"val_top1": 0.5}) == "teacher val top-1 0.500"



def test_the_probe_caches_patch_grids_in_the_teachers_dtype_and_fits_the_same_head(seg_release, monkeypatch):
    """A bf16 teacher's grids are kept in bf16 (half of float32: 15 GiB, not 30, for ADE20K at ViT-g),
    and the head fit on them equals the head fit on their exact float32 copy."""
    from pipeline.contract.device import CPU_BF16_ENV
    from pipeline.sources.index import read_source_index
    from pipeline.stages.probe_features import extract_features, fit_head, views_per_row

    monkeypatch.setenv(CPU_BF16_ENV, "1")
    job = seg_release["job"]
    job = replace(job, teacher=replace(job.teacher, dtype="bf16"), probe=replace(job.probe, epochs=2))
    index = read_source_index(job.data)
    rows = index.split("train")
    grids = extract_features(job, rows, True, torch.device("cpu"), "grids", index.limits, dense=True)
    assert grids.dtype == torch.bfloat16 and views_per_row(job, True) == 2
    assert grids.shape == (len(rows) * 2, 192, 4, 4) and grids.is_contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, SEG_NUM_CLASSES, (len(grids),))
    pooled = lambda head, x, y: torch.nn.functional.cross_entropy(head(x).mean((2, 3)), y)  # noqa: E731
    kept, upcast = (fit_head(job, g, labels, SEG_NUM_CLASSES, DENSE_LINEAR, pooled) for g in (grids, grids.float()))
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), upcast.state_dict().values()))

def test_the_release_holds_masks_and_dense_logits_and_verifies(seg_release):
    out = seg_release["out"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["task"] == "segmentation" and manifest["ignore_index"] == IGNORE_INDEX
    assert manifest["dense"] == {"grid": [4, 4], "logits": "full", "topk": None}
    assert manifest["teacher"]["val_miou"] == seg_release["probe"]["val_miou"]
    assert manifest["counts"] == {"real/train": 12, "real/val": 4, "mix/train": 6} and not manifest["failures"]
    assert verify_release(out) == [] and verify_release(out, quick=True) == []

    index = pq.read_table(out / INDEX).to_pylist()   # one row per sample
    assert len(index) == 22 and len({r["uid"] for r in index}) == 22
    assert all(r["label"] == -1 and 0 <= r["teacher_top1"] < SEG_NUM_CLASSES and r["teacher_entropy"] >= 0 for r in index)

    real = samples(out, "real/train-000000")
    key, members = next(iter(real.items()))
    meta = SampleMeta.from_json(members[M_JSON])
    mask = decode_mask(members[M_MASK])
    assert mask.shape == (meta.height, meta.width) and set(np.unique(mask.numpy())) <= {*range(SEG_NUM_CLASSES), IGNORE_INDEX}
    logits = decode_dense(members, SEG_NUM_CLASSES)
    assert logits.shape == (2, SEG_NUM_CLASSES, 4, 4) and M_DENSE_LOGITS in members
    record = next(r for r in index if r["uid"] == key)
    assert (record["teacher_top1"], pytest.approx(record["teacher_entropy"], abs=1e-5)) == dense_summary(logits)
    val = next(iter(samples(out, "real/val-000000").values()))
    assert decode_dense(val, SEG_NUM_CLASSES).shape == (1, SEG_NUM_CLASSES, 4, 4) and M_MASK in val
    mix = next(iter(samples(out, "mix/mix-000000").values()))
    assert M_MASK not in mix and decode_dense(mix, SEG_NUM_CLASSES).shape == (2, SEG_NUM_CLASSES, 4, 4)


def test_datasets_loads_the_masks_and_dense_logits(seg_release, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root, cache = str(seg_release["out"]), str(tmp_path / "hf-cache")
    card = yaml.safe_load((seg_release["out"] / CARD).read_text().split("---\n")[1])
    assert card["task_categories"] == ["image-segmentation"]
    real = datasets.load_dataset(root, "real", cache_dir=cache)
    mix = datasets.load_dataset(root, "mix", cache_dir=cache)
    assert {s: real[s].num_rows for s in real} == {"train": 12, "validation": 4} and mix["train"].num_rows == 6
    first = real["train"][0]
    assert first["mask.png"].size == first["png"].size == (first["json"]["width"], first["json"]["height"])
    assert set(np.unique(np.asarray(first["mask.png"]))) <= {*range(SEG_NUM_CLASSES), IGNORE_INDEX}
    dense = real["train"].with_format("numpy", columns=[M_DENSE_LOGITS], dtype="float16")[0][M_DENSE_LOGITS]
    assert dense.shape == (2, SEG_NUM_CLASSES, 4, 4)
    assert "mask.png" not in mix["train"].features and M_DENSE_LOGITS in mix["train"].features


def test_topk_dense_logits_per_location(seg_release, tmp_path):
    """generate.logits: topk applies per location: the top k, their logits and the rest mass
    (and generate.features stores CLS ‖ mean-patch per view, as for classification)."""
    job = replace(seg_release["job"], generate=replace(seg_release["job"].generate, logits="topk", topk=2,
                                                       features=True))
    shutil.copytree(seg_release["out"] / TEACHER_DIR, tmp_path / TEACHER_DIR)
    rows = read_plan(plan_path(seg_release["out"])).rows("real/val-000000")[:2]
    worker = ShardWorker(job, tmp_path, device="cpu")
    made = worker.make_samples(rows)
    worker.close()
    stored = samples(seg_release["out"], "real/val-000000")
    for m in made:
        assert {M_DENSE_TOPK_IDX, M_DENSE_REST} <= m.members.keys() and M_DENSE_LOGITS not in m.members
        assert npy_load(m.members[M_FEATURES]).shape == (1, 384)
        full, decoded = decode_dense(stored[m.row.uid], SEG_NUM_CLASSES), decode_dense(m.members, SEG_NUM_CLASSES)
        assert (decoded.argmax(1) == full.argmax(1)).all()
        np.testing.assert_allclose(np.sort(decoded, axis=1)[:, -2:], np.sort(full, axis=1)[:, -2:], atol=1e-3)


def test_worker_records_a_mask_of_another_size_as_a_failure(seg_release, tmp_path):
    from PIL import Image

    shutil.copytree(seg_release["out"] / TEACHER_DIR, tmp_path / TEACHER_DIR)
    row = read_plan(plan_path(seg_release["out"])).rows("real/val-000000")[0]
    small = tmp_path / "small-mask.png"
    Image.fromarray(np.zeros((10, 12), np.uint8), mode="L").save(small)
    worker = ShardWorker(seg_release["job"], tmp_path, device="cpu")
    made = worker.make_samples([replace(row, mask_path=str(small)), replace(row, mask_path=None, uid="f" * 32)])
    worker.close()
    assert made[0].members is None and "mask stored at" in made[0].failure and "its image at" in made[0].failure
    assert "no mask planned" in made[1].failure


def test_a_classification_head_is_refused_for_a_segmentation_job(seg_release, tmp_path):
    """The task is the index's: a head of the other task is refused in one line."""
    from pipeline.models.teacher import make_head, save_head

    save_head(make_head("linear", 384, SEG_NUM_CLASSES), tmp_path / HEAD_FILE,
              {"head": "linear", "in_dim": 384, "num_classes": SEG_NUM_CLASSES})
    with pytest.raises(UserError, match="a classification head, but .* is a segmentation index"):
        ShardWorker(seg_release["job"], tmp_path, device="cpu")


def test_segmentation_mixes_pair_any_two_images(seg_release, tmp_path):
    job = seg_release["job"]
    for plan in (replace(job.plan, pairing="same-class"), replace(job.plan, pairing="cross-class")):
        with pytest.raises(ConfigError, match="plan.pairing: .* a segmentation index has none"):
            write_plan(replace(job, plan=plan), tmp_path / "plan.parquet")
    rows = list(read_plan(plan_path(seg_release["out"])).iter_rows())
    real = [r for r in rows if r.kind == "real"]
    assert all(r.mask_path and r.label == -1 and r.class_name is None for r in real)
    assert all(r.mask_path is None for r in rows if r.kind == "mix")


def test_dry_run_estimates_the_dense_outputs_and_masks(seg_release, tmp_path):
    from pipeline.config import ExpectedCounts
    from pipeline.stages.estimate import NPY_HEADER, TAR_MEMBER, dense_bytes, estimate, format_estimate

    job, out = seg_release["job"], seg_release["out"]
    est = estimate(job)
    assert est["task"] == "segmentation" and est["dense_grid"] == [4, 4]
    real = next(iter(samples(out, "real/train-000000").values()))
    # the estimate's dense member is the stored one (header and tar overhead aside)
    stored = len(real[M_DENSE_LOGITS]) - NPY_HEADER
    assert dense_bytes(job, 2, SEG_NUM_CLASSES, (4, 4)) - NPY_HEADER - TAR_MEMBER == stored == 2 * SEG_NUM_CLASSES * 16 * 2
    # before ingest, from the published sizes: an ADE20K-sized class list, full and top-k
    ade = replace(job, data=replace(job.data, index=str(tmp_path / "none.parquet")),
                  expected_counts=ExpectedCounts(train=1000, val=100, classes=150, task="segmentation"),
                  views=replace(job.views, k=10))
    top10 = replace(ade, generate=replace(ade.generate, logits="topk", topk=10))
    full, topk = estimate(ade), estimate(top10)
    assert full["bytes_per_sample"]["mix/train"] - topk["bytes_per_sample"]["mix/train"] == \
        10 * 16 * (150 * 2 - (10 * 3 + 2)) - 2 * (NPY_HEADER + TAR_MEMBER)
    assert full["task"] == "segmentation" and "dense teacher logits at the 4×4 patch grid" in format_estimate(ade, full)


def test_ray_generation_makes_the_same_shards(seg_release, ray_cluster, tmp_path):
    """`tsd generate`'s Ray pool runs the same worker: the same shard bytes as the worker alone."""
    from pipeline.stages.distribute import generate_stage

    job, out = seg_release["job"], seg_release["out"]
    shutil.copytree(out / TEACHER_DIR, tmp_path / TEACHER_DIR)
    plan, _ = plan_stage(job, tmp_path)
    summary = generate_stage(job, tmp_path, device="cpu", progress=False)
    assert summary.done == len(plan.shard_names())
    for name in plan.shard_names():
        assert (tmp_path / f"{name}.tar").read_bytes() == (out / f"{name}.tar").read_bytes(), name


def test_probe_command_and_its_refusals(seg_release, tmp_path, capsys):
    from pipeline import cli
    from pipeline.stages.probe import run_probe

    out = seg_release["out"]
    assert cli.main(["probe", str(seg_release["job_path"]), "--out", str(out), "--device", "cpu"]) == 0
    assert "probe: teacher val mIoU" in capsys.readouterr().out   # reused: the same inputs
    job = seg_release["job"]
    with pytest.raises(UserError, match="probe.head: 'mlp' has no segmentation form"):
        run_probe(replace(job, probe=replace(job.probe, head="mlp")), tmp_path, "cpu")


def test_a_reader_gets_mask_and_dense_logits_in_one_call(seg_release):
    from pipeline.contract.samples import segmentation_sample

    out = seg_release["out"]
    real = next(iter(samples(out, "real/train-000000").values()))
    mask, logits = segmentation_sample(real, SEG_NUM_CLASSES)
    assert mask.dtype == torch.uint8 and tuple(mask.shape) == tuple(decode_mask(real[M_MASK]).shape)
    assert logits.shape == (2, SEG_NUM_CLASSES, 4, 4)
    mask, logits = segmentation_sample(next(iter(samples(out, "mix/mix-000000").values())), SEG_NUM_CLASSES)
    assert mask is None and logits.shape == (2, SEG_NUM_CLASSES, 4, 4)

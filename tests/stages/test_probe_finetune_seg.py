"""`probe.mode: finetune` for segmentation, on the tiny segmentation job: the dense head trained with
the last block and the final norm by classification's recipe (one loop, `stages.probe_finetune`),
probe.json with the dense probe's keys, the head file carrying the tuned block, the worker labelling
with the finetuned teacher, a release that verifies, and the probe marker (reused, or refit)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from pipeline import cli
from pipeline.config import load_job
from pipeline.contract.dense import patch_grid
from pipeline.contract.layout import HEAD_FILE, MANIFEST, PROBE_METRICS
from pipeline.contract.samples import decode_dense
from pipeline.contract.tasks import IGNORE_INDEX
from pipeline.contract.views import normalize, view_mask, views_batch
from pipeline.models.teacher import DENSE_LINEAR, load_backbone, load_teacher, read_adaptation
from pipeline.sources.index import read_source_index
from pipeline.stages.probe import probe_stage, teacher_line
from pipeline.stages.probe_dense import pixel_loss, probe_masks, stored_masks
from pipeline.stages.probe_finetune import _stored_pixels, finetune
from pipeline.tools.verify import verify_release
from seg_data import SEG_CLASSES, SEG_NUM_CLASSES, build_seg_release, shard_samples

FINETUNE = {"mode": "finetune", "blocks": 1, "epochs": 30, "batch_size": 4, "lr": 0.01, "layer_decay": 0.5,
            "warmup_epochs": 1}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """The tiny segmentation release, its teacher finetuned (probe, plan, worker, release)."""
    return build_seg_release(tmp_path_factory.mktemp("segft"), probe=FINETUNE)


def test_probe_json_has_the_dense_probes_keys_and_the_tuned_parts(finetuned):
    out, metrics, job = finetuned["out"], finetuned["probe"], finetuned["job"]
    assert json.loads((out / PROBE_METRICS).read_text()) == metrics
    assert metrics["task"] == "segmentation" and metrics["mode"] == "finetune" and metrics["head"] == DENSE_LINEAR
    assert metrics["tuned"] == ["blocks.1", "norm"]
    backbone = load_backbone(job.teacher)
    assert metrics["tuned_parameters"] == sum(q.numel() for n, q in backbone.named_parameters()
                                              if n.startswith(("blocks.1.", "norm.")))
    assert metrics["grid"] == [4, 4] and metrics["num_classes"] == SEG_NUM_CLASSES and metrics["views_per_image"] == 1
    assert metrics["ignore_index"] == IGNORE_INDEX and metrics["mask_size"] == 56 and metrics["feature_dim"] == 192
    assert set(metrics["val_per_class_iou"]) == set(SEG_CLASSES) and metrics["val_pixels"] == 4 * 56 * 56
    assert all(0 <= metrics[k] <= 1 for k in ("train_miou", "val_miou", "train_pixel_acc", "val_pixel_acc"))
    # well above chance: the majority class's share of the train views' pixels (the scenes' background)
    index = read_source_index(job.data)
    masks = probe_masks(job, index.split("train"), False)
    majority = float(torch.bincount(masks[masks != IGNORE_INDEX].long()).max()) / int((masks != IGNORE_INDEX).sum())
    assert metrics["train_pixel_acc"] > majority + 0.1, (metrics["train_pixel_acc"], majority)
    assert teacher_line(metrics) == f"teacher val mIoU {metrics['val_miou']:.3f}"


def test_finetune_changes_only_the_named_blocks_and_the_file_reloads_them(finetuned):
    """The shared loop (the classification recipe) on pixel cross-entropy: blocks.1 and the norm move,
    blocks.0 and the embeddings stay bitwise pretrained; the teacher loaded from head.safetensors
    gives the in-memory finetuned model's dense logits."""
    job, out = finetuned["job"], finetuned["out"]
    index = read_source_index(job.data)
    train = index.split("train")
    images, masks = _stored_pixels(job, train, index.limits), stored_masks(job, train)
    size = job.teacher.img_size
    backbone, head, names = finetune(job, train, images, SEG_NUM_CLASSES, "cpu", DENSE_LINEAR,
                                     lambda j, view: view_mask(masks[j], view, size), pixel_loss)
    assert names == ["blocks.1", "norm"]
    pretrained = load_backbone(job.teacher).state_dict()
    own = backbone.state_dict()
    assert all(torch.equal(own[k], pretrained[k]) for k in own if not k.startswith(("blocks.1.", "norm.")))
    assert all(not torch.equal(own[k], pretrained[k]) for k in own
               if k.startswith(("blocks.1.", "norm.")) and k.endswith("weight"))

    tensors = load_file(str(out / HEAD_FILE))
    tuned = {k for k in tensors if k.startswith("backbone.")}
    assert tuned and all(k.startswith(("backbone.blocks.1.", "backbone.norm.")) for k in tuned)
    _, meta, stored = read_adaptation(out / HEAD_FILE)
    assert meta["head"] == DENSE_LINEAR and meta["mode"] == "finetune" and meta["tuned"] == names
    assert meta["task"] == "segmentation" and meta["grid"] == [4, 4]

    teacher = load_teacher(job.teacher, out / HEAD_FILE)
    assert teacher.dense
    x = normalize(torch.stack([views_batch(images[j], [[0.1, 0.0, 0.8, 0.9, j % 2]], size)[0] for j in range(4)]),
                  teacher.mean, teacher.std)
    with torch.no_grad():
        expected = head(patch_grid(backbone, x))
    logits, _ = teacher(x)
    assert logits.shape == (4, SEG_NUM_CLASSES, 4, 4)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    untuned = load_teacher(job.teacher, out / HEAD_FILE)
    untuned.backbone.load_state_dict(pretrained)        # the same head on the pretrained blocks differs
    assert not torch.allclose(untuned(x)[0], logits, atol=1e-2)


def test_the_release_holds_the_finetuned_teachers_dense_logits_and_verifies(finetuned):
    job, out = finetuned["job"], finetuned["out"]
    assert verify_release(out) == [] and cli.main(["verify", str(out)]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    adaptation = manifest["teacher"]["adaptation"]
    assert adaptation["mode"] == "finetune" and adaptation["tuned"] == ["blocks.1", "norm"]
    assert manifest["teacher"]["val_miou"] == finetuned["probe"]["val_miou"] and manifest["task"] == "segmentation"
    teacher = load_teacher(job.teacher, out / HEAD_FILE)
    from pipeline.contract.images import decode_image
    from pipeline.contract.samples import SampleMeta

    for shard in ("real/train-000000", "real/val-000000"):
        for members in list(shard_samples(out, shard).values())[:2]:
            meta = SampleMeta.from_json(members["json"])
            image = decode_image(members[next(k for k in ("png", "jpg", "webp") if k in members)])
            x = normalize(views_batch(image, meta.views, job.teacher.img_size), teacher.mean, teacher.std)
            stored = torch.from_numpy(decode_dense(members, SEG_NUM_CLASSES).astype("float32"))
            assert torch.allclose(stored, teacher(x)[0], atol=2e-2)   # float16 storage


def test_a_rerun_is_reused_and_other_blocks_refit(finetuned, tmp_path, capsys):
    job, out = finetuned["job"], finetuned["out"]
    copy = tmp_path / "release"
    shutil.copytree(out, copy)
    assert probe_stage(job, copy, "cpu")[1] is True
    assert cli.main(["probe", str(finetuned["job_path"]), "--out", str(copy), "--device", "cpu"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("probe: finetuned teacher val mIoU") and line.rstrip().endswith("[reused]")
    more = load_job(finetuned["job_path"], {"probe": {"blocks": 2}})
    metrics, reused = probe_stage(more, copy, "cpu")
    assert not reused and metrics["tuned"] == ["blocks.0", "blocks.1", "norm"]
    assert {k.split(".")[2] for k in load_file(str(copy / HEAD_FILE)) if k.startswith("backbone.blocks.")} == {"0", "1"}

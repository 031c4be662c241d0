"""`probe.mode: finetune`, the paper's counterpoint to probing, on the small demo's tiny teacher:
the last blocks and the head are trained by the documented recipe, the head file carries them, the
worker labels with the finetuned teacher, the manifest says which teacher labelled the release.
An EVA-02 teacher manifest validates and dry-runs."""
from __future__ import annotations

import re

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline import cli
from pipeline.config import load_job
from pipeline.contract.configlib import ConfigError
from pipeline.contract.errors import UserError
from pipeline.contract.layout import HEAD_FILE, PROBE_METRICS
from pipeline.contract.views import normalize, views_batch
from pipeline.models.teacher import load_backbone, load_teacher
from pipeline.stages import jobdir
from pipeline.stages.plan import read_plan
from pipeline.stages.probe import probe_stage
from pipeline.stages.probe_finetune import finetune_groups
from pipeline.stages.release import teacher_record
from pipeline.stages.worker import ShardWorker

from paths import MANIFESTS
FINETUNE = {"probe": {"mode": "finetune", "blocks": 1, "epochs": 2, "batch_size": 32, "lr": 0.001,
                      "layer_decay": 0.5, "warmup_epochs": 0.5}}


@pytest.fixture(scope="module")
def finetuned(small_release, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetuned")
    job = load_job(small_release["job_path"], FINETUNE)
    metrics, reused = probe_stage(job, out)
    return job, out, metrics, reused


def test_finetune_trains_the_last_blocks_and_the_head(finetuned, small_release):
    job, out, metrics, reused = finetuned
    assert not reused and metrics["mode"] == "finetune" and metrics["tuned"] == ["blocks.1", "norm"]
    assert 0 <= metrics["val_top1"] <= 1 and metrics["n_train"] == 112
    tensors = load_file(str(out / HEAD_FILE))
    tuned = {k for k in tensors if k.startswith("backbone.")}
    assert tuned and all(k.startswith(("backbone.blocks.1.", "backbone.norm.")) for k in tuned)
    assert {"weight", "bias"} <= tensors.keys()                   # the linear head, as for a probed teacher
    pretrained = load_backbone(job.teacher).state_dict()
    teacher = load_teacher(job.teacher, out / HEAD_FILE)
    own = teacher.backbone.state_dict()
    assert all(torch.equal(own[k], pretrained[k]) for k in own if k.startswith(("blocks.0.", "patch_embed.")))
    assert any(not torch.equal(own[k], pretrained[k]) for k in own if k.startswith("blocks.1."))
    assert all(torch.equal(own[k[len("backbone."):]], tensors[k]) for k in tuned)
    # a probed teacher's head file holds no backbone weights: its backbone loads as pretrained
    probed = load_backbone(job.teacher, small_release["root"] / HEAD_FILE).state_dict()
    assert all(torch.equal(probed[k], pretrained[k]) for k in pretrained)
    # rerun: reused; another recipe: refit
    assert probe_stage(job, out)[1] is True


def test_layer_wise_lr_decay_groups(small_release):
    job = load_job(small_release["job_path"], {"probe": dict(FINETUNE["probe"], blocks=2)})
    backbone = load_backbone(job.teacher)
    head = torch.nn.Linear(384, 8)
    groups, names = finetune_groups(job, backbone, head)
    assert names == ["blocks.0", "blocks.1", "norm"]
    scales = {id(q): g["scale"] for g in groups for q in g["params"]}
    assert scales[id(backbone.blocks[0].attn.qkv.weight)] == 0.25    # depth 2 from the top: lr · 0.5²
    assert scales[id(backbone.blocks[1].mlp.fc1.weight)] == 0.5       # the last block: lr · 0.5
    assert scales[id(backbone.norm.weight)] == scales[id(head.weight)] == 1.0
    assert id(backbone.patch_embed.proj.weight) not in scales and not backbone.patch_embed.proj.weight.requires_grad
    decay = {id(q): g["weight_decay"] for g in groups for q in g["params"]}
    assert decay[id(head.bias)] == 0.0 and decay[id(head.weight)] == job.probe.weight_decay
    with pytest.raises(UserError, match="probe.blocks: 3, but the teacher has 2 blocks"):
        finetune_groups(load_job(small_release["job_path"], {"probe": dict(FINETUNE["probe"], blocks=3)}),
                        backbone, head)
    with pytest.raises(ConfigError, match="probe.layer_decay: must be in"):
        load_job(small_release["job_path"], {"probe": {"layer_decay": 0}})


def test_a_full_finetune_trains_every_block_and_the_embeddings(small_release, tmp_path):
    """probe.blocks: all: every backbone parameter trained, the embeddings one layer-decay step below
    the first block; the head file carries them all and the teacher loads them back."""
    job = load_job(small_release["job_path"], {"probe": dict(FINETUNE["probe"], blocks="all", epochs=1)})
    backbone = load_backbone(job.teacher)
    head = torch.nn.Linear(384, 8)
    groups, names = finetune_groups(job, backbone, head)
    assert names == ["patch_embed", "cls_token", "pos_embed", "blocks.0", "blocks.1", "norm"]
    scales = {id(q): g["scale"] for g in groups for q in g["params"]}
    assert all(id(q) in scales and q.requires_grad for q in backbone.parameters())   # nothing frozen
    assert scales[id(backbone.patch_embed.proj.weight)] == scales[id(backbone.pos_embed)] == 0.125   # 0.5³
    assert scales[id(backbone.blocks[0].attn.qkv.weight)] == 0.25 and scales[id(backbone.norm.weight)] == 1.0
    with pytest.raises(ConfigError, match=r"probe.blocks: expected int \| 'all', got str 'every'"):
        load_job(small_release["job_path"], {"probe": {"blocks": "every"}})

    metrics, _ = probe_stage(job, tmp_path)
    assert metrics["tuned"] == names
    assert metrics["tuned_parameters"] == sum(q.numel() for q in backbone.parameters())
    tensors = load_file(str(tmp_path / HEAD_FILE))
    assert {"backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight"} <= tensors.keys()
    teacher = load_teacher(job.teacher, tmp_path / HEAD_FILE)
    pretrained = load_backbone(job.teacher).state_dict()
    own = teacher.backbone.state_dict()
    assert all(torch.equal(own[k], tensors["backbone." + k]) for k in own)
    assert not torch.equal(own["patch_embed.proj.weight"], pretrained["patch_embed.proj.weight"])
    assert teacher_record(job, tmp_path)["adaptation"]["recipe"]["blocks"] == "all"


def test_the_worker_labels_with_the_finetuned_teacher(finetuned, small_release):
    job, out, _, _ = finetuned
    plan = read_plan(jobdir.plan_path(small_release["root"]))
    name = next(n for n in plan.shard_names() if n.startswith("real/val"))
    rows = plan.rows(name)[:3]
    worker = ShardWorker(job, out, device="cpu")
    made = worker.make_samples(rows)
    worker.close()
    teacher = load_teacher(job.teacher, out / HEAD_FILE)
    probed = load_teacher(job.teacher, small_release["root"] / HEAD_FILE)
    from pipeline.contract.images import decode_image
    from pipeline.contract.samples import npy_load

    for m in made:
        pixels = views_batch(decode_image(m.members["jpg"]), m.row.views, job.teacher.img_size)
        x = normalize(pixels, teacher.mean, teacher.std)
        stored = npy_load(m.members["logits.npy"]).astype("float32")
        assert torch.allclose(torch.from_numpy(stored), teacher(x)[0], atol=2e-2)
        assert not torch.allclose(torch.from_numpy(stored), probed(x)[0], atol=2e-2)


def test_the_manifest_records_which_teacher_labelled(finetuned, small_release):
    job, out, metrics, _ = finetuned
    record = teacher_record(job, out)
    assert record["adaptation"]["mode"] == "finetune" and record["adaptation"]["tuned"] == ["blocks.1", "norm"]
    assert record["adaptation"]["recipe"]["layer_decay"] == 0.5 and record["val_top1"] == metrics["val_top1"]
    probed = teacher_record(load_job(small_release["job_path"]), small_release["root"])
    assert probed["adaptation"] == {"mode": "probe", "tuned": [], "recipe": probed["adaptation"]["recipe"]}
    assert "layer_decay" not in probed["adaptation"]["recipe"] and probed["head_sha256"] != record["head_sha256"]
    assert (out / PROBE_METRICS).is_file()


# -- the EVA-02 teacher manifest ----------------------------------------------------------------
def test_eva02_manifest_validates_and_dry_runs(tmp_path, capsys):
    import timm

    from recipes import localise, write_yaml

    data = yaml.safe_load((MANIFESTS / "cub200-eva02.yaml").read_text())
    assert data["teacher"]["arch"] == "eva02_large_patch14_448.mim_m38m_ft_in22k_in1k" and timm.is_model(
        data["teacher"]["arch"])
    job = load_job(write_yaml(tmp_path / "job.yaml", localise(data, tmp_path)))
    assert (job.teacher.img_size, job.probe.mode) == (448, "probe")
    finetuned = load_job(write_yaml(tmp_path / "job.yaml", localise(data, tmp_path)), {"probe": {"mode": "finetune"}})
    assert finetuned.probe.blocks >= 1
    assert cli.main(["plan", str(MANIFESTS / "cub200-eva02.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"real/train\s+5,994\s", out) and "GPU-hours" in out
    assert "eva02_large_patch14_448.mim_m38m_ft_in22k_in1k not measured" in out
    assert cli.main(["plan", str(MANIFESTS / "cub200-eva02.yaml"), "--dry-run", "--set", "probe.mode=finetune"]) == 0
    assert "finetune" in capsys.readouterr().out
    # the architecture is real: built on the meta device, its feature is CLS ‖ mean(patch tokens)
    from pipeline.stages.estimate import teacher_feature_dim
    assert teacher_feature_dim(job) == 2 * 1024

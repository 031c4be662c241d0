"""The tiny teacher's stand-in pretraining: in place, same layout, loadable, deterministic, useful."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import ProbeConfig, TeacherConfig
from pipeline.contract.views import Views, center_view, normalize, views_batch
from pipeline.demo.pretrain import CORPUS_SEED_OFFSET, STORE_SIZE, load_corpus, pretrain_teacher
from pipeline.testing.tiny import TinySizes, build_teacher
from pipeline.testing.toydata import write_toy_dataset
from pipeline.models.teacher import backbone_features, data_config, load_backbone
from pipeline.stages.probe import accuracy, fit_head

SIZES = TinySizes()
# short on purpose: the test checks the mechanics and the direction, not the demo's accuracy
SHORT = dict(seed=0, steps=60, batch_size=32, per_class=24, warmup=5, lr=1e-3, threads=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    initial = build_teacher(tmp / "init", SIZES, seed=0)
    paths = {}
    for name in ("a", "b"):
        paths[name] = tmp / name / "teacher" / "model.safetensors"
        paths[name].parent.mkdir(parents=True)
        shutil.copyfile(initial, paths[name])
    metrics = {name: pretrain_teacher(paths[name], SIZES, corpus_dir=tmp / "corpus", **SHORT) for name in paths}
    return {"tmp": tmp, "initial": initial, "paths": paths, "metrics": metrics}


def _cfg(path) -> TeacherConfig:
    return TeacherConfig(arch=SIZES.teacher_arch, weights=str(path), img_size=SIZES.teacher_img,
                         model_kwargs=dict(SIZES.teacher_kwargs))


def test_changes_weights_keeps_keys_and_shapes(runs):
    before, after = load_file(str(runs["initial"])), load_file(str(runs["paths"]["a"]))
    assert after.keys() == before.keys()
    assert all(after[k].shape == before[k].shape and after[k].dtype == before[k].dtype for k in before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "patch_embed.proj.weight" in changed and any(k.startswith("blocks.") for k in changed)
    m = runs["metrics"]["a"]
    assert m["steps"] == SHORT["steps"] and m["corpus_classes"] == 12 and m["corpus_seed"] == CORPUS_SEED_OFFSET
    assert m["loss_last50"] < m["loss_first"]


def test_loads_back_through_timm_file_overlay(runs):
    import timm

    path = runs["paths"]["a"]
    model = timm.create_model(SIZES.teacher_arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              num_classes=0, img_size=SIZES.teacher_img, **SIZES.teacher_kwargs)
    saved = load_file(str(path))
    state = model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    # and through the pipeline's own loader
    backbone = load_backbone(_cfg(path))
    assert all(torch.equal(backbone.state_dict()[k], saved[k]) for k in saved)


def test_deterministic(runs):
    a, b = (load_file(str(runs["paths"][n])) for n in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = runs["metrics"]["a"], runs["metrics"]["b"]
    timing = {"seconds", "data_s"}
    assert {k: v for k, v in ma.items() if k not in timing} == {k: v for k, v in mb.items() if k not in timing}


def test_corpus_is_not_the_demo_data(runs):
    demo = runs["tmp"] / "demo"
    write_toy_dataset(demo, num_classes=10, per_class=24, seed=0)
    corpus, _ = load_corpus(runs["tmp"] / "corpus")
    shown, _ = load_corpus(demo)
    corpus_keys = {(t.shape, t.flatten()[:512].numpy().tobytes()) for t in corpus}
    assert not any((t.shape, t.flatten()[:512].numpy().tobytes()) in corpus_keys for t in shown)


def _features(backbone, root):
    """Centre views of a toy tree, stored as the demo stores them, through the teacher."""
    mean, std = data_config(backbone)
    images, labels = load_corpus(root, STORE_SIZE)
    spec = Views()
    x = torch.stack([views_batch(im, center_view(im.shape[2], im.shape[1], spec), SIZES.teacher_img)[0]
                     for im in images])
    with torch.no_grad():
        return backbone_features(backbone, normalize(x, mean, std)), labels


def test_improves_the_linear_probe(runs):
    root = runs["tmp"] / "heldout"
    write_toy_dataset(root, num_classes=10, per_class=20, seed=123)
    job = SimpleNamespace(seed=0, probe=ProbeConfig(head="linear", epochs=100, lr=3e-3, batch_size=64))
    acc = {}
    for name, path in (("random", runs["initial"]), ("pretrained", runs["paths"]["a"])):
        feats, labels = _features(load_backbone(_cfg(path)), root)
        train, val = torch.arange(len(labels)) % 2 == 0, torch.arange(len(labels)) % 2 == 1
        head = fit_head(job, feats[train], labels[train], 10)
        acc[name] = accuracy(head, feats[val], labels[val])
    assert acc["pretrained"] >= acc["random"] + 0.1, acc

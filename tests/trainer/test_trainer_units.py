"""Trainer units on a real release: losses, config and release checks, view replay, data order,
corrupt data, students. In-process and fast; the training runs are in test_trainer_runs.py."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from trainer_data import config_dict, copy_release, corrupt_sample_image, shard_path, shard_samples, truncate_shard, write_config

from pipeline.contract.configlib import ConfigError, build, parse_overrides
from pipeline.contract.images import decode_image
from pipeline.contract.layout import MANIFEST
from pipeline.contract.samples import dense_logits
from pipeline.contract.shards import read_shard
from pipeline.contract.views import normalize, view_pixels
from trainer import data, samples, students
from trainer.config import TrainConfig, check_releases, load_config
from trainer.losses import distill_loss, feature_loss


def _plan(release_path, world=1, **sections):
    config = build(TrainConfig, config_dict(release_path, **sections))
    releases = check_releases(config)
    replay = samples.Replay(releases.num_classes, config.student.img_size, config.runtime.seed,
                         releases.feature_dim() if config.loss.feature_weight else None,
                         on_corrupt=config.data.on_corrupt)
    return data.train_plan(releases, config, world, replay), releases


def _epoch_batches(plan, epoch=0, n=None, skip=0):
    """The batches of an epoch from batch `skip` on (a loader started at that step, as a resume's)."""
    spe = plan.steps_per_epoch
    stream = data.batches(data.train_loader(plan, epoch * spe + skip, (epoch + 1) * spe))
    out = [batch for _, batch in zip(range(n or plan.steps_per_epoch), stream)]
    stream.close()
    return out


# -- (6) losses ---------------------------------------------------------------------------------
def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_distill_loss_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)) * 3
    labels = np.array([2, 0, -1, 3, -1])
    is_real = labels >= 0
    alpha, T = 0.3, 2.5
    # CE over the 3 real samples only; KL(p_t || p_s) at T, summed over classes, mean over all 5
    ce = np.mean([-np.log(_softmax(s)[i, labels[i]]) for i in np.flatnonzero(is_real)])
    ps, pt = _softmax(s / T), _softmax(t / T)
    kd = np.sum(pt * (np.log(pt) - np.log(ps))) / 5
    expected = (1 - alpha) * ce + alpha * T * T * kd
    loss, ce_t, kd_t = distill_loss(torch.tensor(s), torch.tensor(t), torch.tensor(labels), torch.tensor(is_real),
                                    alpha, T)
    assert ce_t.item() == pytest.approx(ce, rel=1e-5)
    assert kd_t.item() == pytest.approx(kd, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_distill_loss_edge_cases():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    no_real = torch.zeros(3, dtype=torch.bool)
    loss, ce, kd = distill_loss(s, t, torch.full((3,), -1), no_real, 0.5, 2.0)
    assert ce.item() == 0.0 and loss.item() == pytest.approx(0.5 * 4 * kd.item())
    labels, real = torch.tensor([0, 1, 2]), torch.ones(3, dtype=torch.bool)
    loss, ce, _ = distill_loss(s, t, labels, real, 0.0, 2.0)  # finetune: CE only
    assert loss.item() == ce.item() == pytest.approx(torch.nn.functional.cross_entropy(s, labels).item())
    _, _, kd = distill_loss(t.clone(), t, labels, real, 1.0, 4.0)
    assert abs(kd.item()) < 1e-6  # a student equal to its teacher
    f = torch.randn(6, 8)
    assert feature_loss(f, 3 * f).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss(f, -f).item() == pytest.approx(2.0, abs=1e-6)


# -- config and release checks ------------------------------------------------------------------
def _config_error(tmp_path, release_path, **sections) -> str:
    path = write_config(tmp_path / "train.yaml", release_path, **sections)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_config_errors_name_file_and_key(tmp_path, release):
    assert "data.batch_sise: unknown key" in _config_error(tmp_path, release, data={"batch_sise": 3})
    assert "loss.alpha: must be in [0, 1], got 1.5" in _config_error(tmp_path, release, loss={"alpha": 1.5})
    assert "optim.lr: expected a number" in _config_error(tmp_path, release, optim={"lr": "fast"})
    msg = _config_error(tmp_path, release, student={"weights": "missing.safetensors"})
    assert "student.weights: file not found" in msg and "missing.safetensors" in msg
    assert "student.arch: unknown timm model 'resnet_nope'" in _config_error(tmp_path, release,
                                                                            student={"arch": "resnet_nope"})
    assert "releases[0]:" in _config_error(tmp_path, release, releases=[str(tmp_path)])
    assert "no manifest.json" in _config_error(tmp_path, release, releases=[str(tmp_path)])
    msg = _config_error(tmp_path, release, data={"generators": ["mixup", "unclip"]})
    assert "data.generators[1]: 'unclip'" in msg and "have: mixup" in msg
    msg = _config_error(tmp_path, release, loss={"feature_weight": 1.0})
    assert "loss.feature_weight" in msg
    assert "data.on_corrupt: 'ignore' is not one of" in _config_error(tmp_path, release, data={"on_corrupt": "ignore"})


def test_releases_must_agree(tmp_path, release, rich_release):
    msg = _config_error(tmp_path, release, releases=[str(release), str(rich_release)])
    assert "releases[1]:" in msg and "classes differ" in msg
    old = copy_release(release, tmp_path / "old")
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["format_version"] = 0
    (old / MANIFEST).write_text(json.dumps(manifest))
    assert "format_version 0" in _config_error(tmp_path, release, releases=[str(old)])
    gone = copy_release(release, tmp_path / "gone")
    shard_path(gone, "real", "train", 2).unlink()
    assert "real/train-000002.tar listed in manifest.json is missing" in _config_error(
        tmp_path, release, releases=[str(gone)])


def test_overrides_and_generator_selection(tmp_path, release):
    assert parse_overrides(["optim.lr=0.1", "data.generators=[mixup]", "runtime.compile=true"]) == {
        "optim": {"lr": 0.1}, "data": {"generators": ["mixup"]}, "runtime": {"compile": True}}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["optim.lr"])
    config, releases = load_config(write_config(tmp_path / "t.yaml", release), {"data": {"generators": ["mixup"]}})
    assert config.data.generators == ["mixup"] and len(releases.shards("mix", "train", ["mixup"])) == 3
    assert releases.shards("mix", "train", []) == []


def test_batch_split_and_reader_checks(release):
    plan, _ = _plan(release)
    assert (plan.n_real, plan.n_mix, plan.steps_per_epoch) == (24, 8, 6)   # 25% of 32; ceil(128 real / 24 per step)
    assert len(plan.real_urls) == 4 and len(plan.mix_urls) == 3
    plan, _ = _plan(release, loss={"mode": "finetune"})
    assert (plan.n_real, plan.n_mix, plan.mix_urls) == (32, 0, ())          # mixes are not read
    plan, _ = _plan(release, world=2, data={"workers": 1})
    assert (plan.n_real, plan.n_mix) == (12, 4)                              # the global batch, split
    with pytest.raises(ConfigError) as e:
        _plan(release, world=2, data={"workers": 2})
    assert str(e.value).startswith("data.workers:") and "3 mix/train shard(s) for 2 rank(s) x 2 DataLoader " \
        "worker(s) = 4 readers" in str(e.value) and str(release) in str(e.value)
    with pytest.raises(ConfigError, match="data.batch_size: 32 is not divisible by 3 ranks"):
        _plan(release, world=3, data={"workers": 0})


# -- (7) view replay and data order -------------------------------------------------------------
def test_trainer_feeds_exactly_the_recorded_view(release):
    plan, releases = _plan(release, data={"workers": 0})
    batch = _epoch_batches(plan, n=1)[0]
    stored = {**shard_samples(release, "real", "train"), **shard_samples(release, "mix", "train")}
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = []
    for i, uid in enumerate(batch["uid"]):
        members, meta = stored[uid]
        v = int(batch["view_index"][i])
        assert v == samples.choose_view(0, 0, uid, len(meta.views))
        pixels = view_pixels(decode_image(members["jpg"]), meta.views[v], 32)
        assert torch.equal(batch["pixels"][i], pixels)
        logits = dense_logits(members, meta, releases.num_classes)
        assert torch.equal(batch["logits"][i], torch.from_numpy(logits[v]))
        assert bool(batch["is_real"][i]) == (meta.kind == "real") and int(batch["label"][i]) == meta.label
        expected.append(pixels)
    assert batch["is_real"].tolist() == [True] * 24 + [False] * 8
    x = data.model_inputs(batch, torch.device("cpu"), 32, mean, std)
    assert torch.equal(x, normalize(torch.stack(expected), mean, std))


def test_view_choice_is_reseeded_per_epoch_and_reproducible(release):
    uids = list(shard_samples(release, "real", "train"))
    epoch0 = [samples.choose_view(7, 0, u, 3) for u in uids]
    assert epoch0 == [samples.choose_view(7, 0, u, 3) for u in uids]
    assert np.mean([a != b for a, b in zip(epoch0, [samples.choose_view(7, 1, u, 3) for u in uids])]) > 0.4
    assert np.mean([a != b for a, b in zip(epoch0, [samples.choose_view(8, 0, u, 3) for u in uids])]) > 0.4
    assert set(epoch0) == {0, 1, 2}


def test_batches_are_a_function_of_seed_and_epoch(release):
    plan, _ = _plan(release, data={"workers": 2})
    first = [b["uid"] for b in _epoch_batches(plan, 0)]
    assert first == [b["uid"] for b in _epoch_batches(plan, 0)]              # same epoch, same batches
    assert first != [b["uid"] for b in _epoch_batches(plan, 1)]              # reshuffled every epoch
    for worker in (0, 1):  # batches alternate between the 2 workers; each reads 2 of the 4 real shards
        real = [u for b in first[worker::2] for u in b[:24]]
        assert len(real) == 3 * 24 and len(set(real[:64])) == 64            # a whole pass before any repeat
    resumed = _epoch_batches(plan, 0, skip=3)                                # the workers skip 0-2 themselves
    assert [b["uid"] for b in resumed] == first[3:]


def test_one_loader_serves_the_run_and_a_resume_reads_the_same_batches(release):
    """One DataLoader across epochs gives the batches of one loader per epoch, also when the epoch
    (9 steps) is not a multiple of the workers (2), and a loader started at any step (a resume)
    continues them exactly."""
    plan, _ = _plan(release, data={"workers": 2, "batch_size": 20})
    spe = plan.steps_per_epoch
    assert spe % plan.workers

    def uids(start, stop):
        stream = data.batches(data.train_loader(plan, start, stop))
        out = [b["uid"] for b in stream]
        stream.close()
        return out

    run = uids(0, 2 * spe + 1)
    assert len(run) == 2 * spe + 1
    assert run[:spe] == [b["uid"] for b in _epoch_batches(plan, 0)]
    assert run[spe:2 * spe] == [b["uid"] for b in _epoch_batches(plan, 1)]
    assert uids(spe + 3, 2 * spe + 1) == run[spe + 3:]


def test_release_read_through_an_fsspec_url(release):
    plan, releases = _plan(release, releases=[f"file://{release}"], data={"workers": 0})
    assert releases.releases[0].root.startswith("file://")
    assert len(_epoch_batches(plan, n=2)[1]["uid"]) == 32


def test_topk_logits_and_features(rich_release):
    plan, releases = _plan(rich_release, loss={"feature_weight": 1.0}, data={"workers": 0, "batch_size": 16})
    assert releases.feature_dim() == 6 and plan.replay.feature_dim == 6
    batch = _epoch_batches(plan, n=1)[0]
    assert batch["logits"].shape == (16, 5) and batch["features"].shape == (16, 6)
    stored = shard_samples(rich_release, "real", "train")
    members, meta = stored[batch["uid"][0]]
    assert "logits.npy" not in members and "topk_idx.npy" in members
    assert torch.equal(batch["logits"][0], torch.from_numpy(dense_logits(members, meta, 5)[batch["view_index"][0]]))


def test_device_decode_path_matches_cpu_decode(release):
    """The GPU-decode code path (JPEG bytes → decode_jpeg → view_pixels), run on the CPU."""
    plan, _ = _plan(release, data={"workers": 0})
    gpu_plan = dataclasses.replace(plan, replay=dataclasses.replace(plan.replay, gpu_decode=True))
    cpu_batch, jpeg_batch = _epoch_batches(plan, n=1)[0], _epoch_batches(gpu_plan, n=1)[0]
    assert cpu_batch["uid"] == jpeg_batch["uid"] and "pixels" not in jpeg_batch
    pixels = data.decode_on_device(jpeg_batch, 32, torch.device("cpu"))
    assert (pixels - cpu_batch["pixels"]).abs().max() <= 2 / 255   # libjpeg builds may round differently


# -- (8) corrupt data ---------------------------------------------------------------------------
def test_corrupt_sample_is_named(tmp_path, release):
    broken = copy_release(release, tmp_path / "broken")
    shard = shard_path(broken, "real", "train", 0)
    key = corrupt_sample_image(shard)
    plan, _ = _plan(broken, loss={"mode": "kd-real"}, data={"workers": 1})
    with pytest.raises(samples.Corrupt) as e:
        _epoch_batches(plan, 0)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(shard)) and f"sample {key}" in message


def test_truncated_shard_is_named(tmp_path, release):
    broken = copy_release(release, tmp_path / "broken")
    shard = shard_path(broken, "mix", "train", 1)
    truncate_shard(shard)
    plan, _ = _plan(broken, data={"mix_ratio": 1.0, "workers": 0})
    with pytest.raises(samples.Corrupt) as e:
        _epoch_batches(plan, 0, n=20)
    assert str(shard) in str(e.value) and "\n" not in str(e.value)


def test_skip_counts_corrupt_data(tmp_path, release, capfd):
    broken = copy_release(release, tmp_path / "broken")
    real, mix = shard_path(broken, "real", "train", 3), shard_path(broken, "mix", "train", 1)
    key = corrupt_sample_image(real)
    truncate_shard(mix)
    readable = 0
    with pytest.raises(ValueError):
        for _ in read_shard(str(mix)):
            readable += 1
    plan, _ = _plan(broken, data={"on_corrupt": "skip", "workers": 0})
    got = _epoch_batches(plan, 0)
    assert all(len(b["uid"]) == 32 for b in got)      # skipped samples are replaced, batches stay full
    assert key not in {u for b in got for u in b["uid"]}
    # counted in samples, per shard: the bad sample once, the truncated shard's unread samples per read
    lost = {}
    for b in got:
        for url, n in b["skipped_shards"].items():
            lost[url] = lost.get(url, 0) + n
    assert lost[str(real)] == 1 and 0 < readable < 32
    assert lost[str(mix)] > 0 and lost[str(mix)] % (32 - readable) == 0
    assert sum(b["skipped"] for b in got) == sum(lost.values())
    err = capfd.readouterr().err
    assert f"sample {key}" in err and "mix/mix-000001.tar" in err and f"({32 - readable} sample(s) lost)" in err


# -- students -----------------------------------------------------------------------------------
def test_student_weights_from_a_local_file(tmp_path):
    source = students.build_student("resnet10t", num_classes=10)
    path = tmp_path / "resnet10t.safetensors"
    save_file(source.state_dict(), str(path))
    student = students.build_student("resnet10t", num_classes=4, weights=str(path))
    loaded, saved = student.state_dict(), source.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved if not k.startswith("fc."))
    assert student.fc.weight.shape == (4, 512)                      # a fresh head for the release's classes
    with pytest.raises(ConfigError, match="student.weights: .* does not fit resnet18"):
        students.build_student("resnet18", num_classes=4, weights=str(path))
    logits, feature = students.features(student.eval(), torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 4) and feature.shape == (2, students.feature_dim(student))
    assert torch.allclose(logits, student.fc(feature))


def test_fixed_grid_students_need_their_img_size():
    fixed = {"dynamic_img_size": False}   # timm's test_vit resamples its position embeddings by default
    with pytest.raises(ConfigError, match="student.model_kwargs.img_size: 32"):
        students.build_student("test_vit", num_classes=4, img_size=32, model_kwargs=fixed)
    # a dynamic_img_size ViT takes any input size: no error
    dynamic = students.build_student("test_vit", num_classes=4, img_size=32)
    assert dynamic.dynamic_img_size and dynamic(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    vit = students.build_student("test_vit", num_classes=4, img_size=32, model_kwargs={"img_size": 32})
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    mean, std = students.mean_std(vit)
    assert len(mean) == len(std) == 3 and math.isfinite(sum(mean))


def test_eval_report_without_matplotlib_still_writes_per_class(tmp_path, monkeypatch):
    import sys

    from trainer.evaluate import eval_report

    rows = [{"uid": str(i), "label": i % 2, "pred": 0, "teacher": i % 2} for i in range(6)]
    metrics = {"top1": 0.5, "n": 6}
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)   # as if the viz extra were not installed
    csv_path, png = eval_report(metrics, rows, {"arch": "resnet10t", "classes": ["a", "b"]}, "rel", tmp_path)
    assert png is None and not (tmp_path / "confusion.png").exists()
    assert [(r["class"], r["n"], r["top1"], r["teacher_top1"]) for r in metrics["per_class"]] == [
        ("a", 3, 1.0, 1.0), ("b", 3, 0.0, 1.0)]
    assert csv_path.read_text().splitlines() == ["class,n,top1,teacher_top1", "a,3,1.0000,1.0000", "b,3,0.0000,1.0000"]

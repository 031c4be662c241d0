"""`tsd compare`'s extra rows: the mix rows on fractions of one generated pool (its first shards),
a second student (the DINOv2 ViT-S/14 at a tiny size) with rows of its own, and each row's data
hours from the seconds the shard stats recorded. Synthetic releases, tiny models (seconds)."""
from __future__ import annotations

import json
import shutil

import pytest
from trainer_data import write_compare

from pipeline.contract.configlib import ConfigError, build
from pipeline.contract.layout import STATS_SUFFIX
from trainer import compare
from trainer.config import TrainConfig, check_releases
from trainer.cost import ShardSeconds, row_hours
from trainer.data import train_plan
from trainer.release import open_releases
from trainer.samples import Replay

# the same tiny ViT-S/14 (patch 14, DINOv2's layer scale) the demo compares, smaller still
VIT = {"arch": "vit_small_patch14_dinov2", "img_size": 28,
       "model_kwargs": {"img_size": 28, "depth": 1, "embed_dim": 32, "num_heads": 2}}


# two steps, no validation: the row tests look at the plan and the results' shape, not training
FAST = {"optim": {"name": "adamw", "lr": 0.003, "steps": 2, "warmup_epochs": 0.01},
        "runtime": {"device": "cpu", "seed": 0, "log_every": 1, "eval_every": 0}}


def plan(tmp_path, root, **over):
    return compare.row_plan(compare.load_compare(write_compare(tmp_path / "c.yaml", root, **{**FAST, **over})))


def test_mix_pool_is_the_first_shards_holding_the_fraction(release):
    """96 mixes in 3 shards of 32: a quarter needs 24 (one shard), a half 48 (two), all three."""
    releases = open_releases([str(release)])
    names = [s.name for s in releases.shards("mix", "train")]
    for fraction, count in ((0.25, 1), (0.5, 2), (0.7, 3), (1.0, 3)):
        assert [s.name for s in releases.mix_pool(None, fraction)] == names[:count]
    assert releases.mix_pool(["cutmix"], 1.0) == []
    # a training run with data.mix_pool reads those shards only
    config = build(TrainConfig, {"releases": [str(release)], "data": {"mix_pool": 0.5, "workers": 0,
                                                                       "batch_size": 16}})
    trained = train_plan(check_releases(config), config, 1, Replay(4, 32, seed=0))
    assert list(trained.mix_urls) == [s.url for s in releases.mix_pool(None, 0.5)] and len(trained.mix_urls) == 2


def test_pool_fraction_and_student_rows(tmp_path, release):
    rows, budget = plan(tmp_path, release, pool_fractions=[1.0, 0.25], rows=["finetune", "kd", "mixup"],
                        students=[{"name": "vits14", "student": VIT, "rows": ["kd", "mixup"],
                                   "optim": {"name": "adamw", "lr": 0.001, "warmup_epochs": 0.01}}])
    assert [r.id for r in rows] == ["finetune", "kd", "kd+mixup-0.25x", "kd+mixup", "kd@vits14",
                                    "kd+mixup-0.25x@vits14", "kd+mixup@vits14"]
    by_id = {r.id: r for r in rows}
    assert by_id["kd+mixup-0.25x"].config.data.mix_pool == 0.25 and by_id["kd+mixup"].config.data.mix_pool == 1.0
    assert by_id["kd+mixup-0.25x"].label == "KD + Mixup, 0.25× pool"
    vit = by_id["kd@vits14"].config
    assert vit.student.arch == "vit_small_patch14_dinov2" and vit.optim.lr == 0.001
    assert vit.optim.steps == budget.steps == by_id["kd"].config.optim.steps   # one budget for both students
    # pool_kinds: the fractions for the listed generators only
    rows, _ = plan(tmp_path, release, pool_fractions=[0.5, 1.0], pool_kinds=["mixup"])
    assert [r.id for r in rows] == ["finetune", "kd", "kd+mixup-0.5x", "kd+mixup"]


@pytest.mark.parametrize("over, message", [
    ({"pool_fractions": [0.0]}, r"pool_fractions: distinct values in \(0, 1\] are needed, got \[0.0\]"),
    ({"pool_fractions": [0.5, 0.5]}, r"pool_fractions: distinct values"),
    ({"pool_kinds": ["cutmix"]}, r"pool_kinds\[0\]: 'cutmix' is not a row these releases allow"),
    ({"students": [{"name": "v", "student": VIT, "rows": ["sd-text"]}]},
     r"students\[0\].rows\[0\]: 'sd-text' is not a row"),
    ({"students": [{"name": "v", "student": VIT}, {"name": "v", "student": VIT}]}, r"students: names must differ"),
])
def test_compare_row_errors(tmp_path, release, over, message):
    with pytest.raises(ConfigError, match=message):
        plan(tmp_path, release, **over)


def test_data_hours_from_recorded_shard_seconds(tmp_path, release):
    copy = tmp_path / "release"
    shutil.copytree(release, copy)
    rows, _ = plan(tmp_path, copy, pool_fractions=[0.5, 1.0])
    by_id = {r.id: r for r in rows}

    def hours(row_id):
        r = by_id[row_id]
        return row_hours(ShardSeconds(), r.releases, r.teacher is not None, r.generator, r.pool)

    # the synthetic release's stats record no seconds: unknown, not zero
    assert hours("kd") == {"hours": None, "source": "not recorded"}
    assert hours("finetune") == {"hours": 0.0, "source": "nothing generated"}
    seconds = {}
    for i, stats_path in enumerate(sorted(copy.rglob(f"*{STATS_SUFFIX}"))):
        stats = json.loads(stats_path.read_text())
        stats["seconds"] = seconds[stats["shard"]] = 10.0 * (i + 1)
        stats_path.write_text(json.dumps(stats))
    real = sum(v for k, v in seconds.items() if k.startswith("real/train"))
    mixes = [seconds[k] for k in sorted(seconds) if k.startswith("mix/")]
    assert hours("kd")["hours"] == pytest.approx(real / 3600)
    # a fraction pays its share of the whole pool's seconds (64 of its 96 mixes), not its first shards'
    # own: those also paid for loading the generator
    assert hours("kd+mixup-0.5x")["hours"] == pytest.approx((real + sum(mixes) * 64 / 96) / 3600)
    assert hours("kd+mixup") == {"hours": pytest.approx((real + sum(mixes)) / 3600),
                                 "source": "recorded shard seconds"}


def test_compare_with_a_vit_student_and_pool_rows(tmp_path, release, single_thread):
    """Every row at one budget with both students; results carry pools, hours and the differences."""
    config = write_compare(tmp_path / "c.yaml", release, **FAST, rows=["finetune", "kd", "mixup"],
                           pool_fractions=[0.5, 1.0], students=[{"name": "vits14", "student": VIT, "rows": ["finetune", "kd"]}])
    results = compare.run_compare(compare.load_compare(config), tmp_path / "out", log=lambda line: None)
    by_id = {r["id"]: r for r in results["rows"]}
    assert list(by_id) == ["finetune", "kd", "kd+mixup-0.5x", "kd+mixup", "finetune@vits14", "kd@vits14"]
    assert results["students"] == ["resnet10t", "vit_small_patch14_dinov2"]
    assert {(r["steps"], r["real_images"]) for r in results["rows"]} == {(2, 16)}
    assert by_id["kd+mixup-0.5x"]["pool_mixes"] == 64 and by_id["kd+mixup"]["pool_mixes"] == 96
    assert by_id["kd@vits14"]["student"] == "vit_small_patch14_dinov2"
    info = json.loads((tmp_path / "out" / "runs" / "kd@vits14" / "seed-1" / "student.json").read_text())
    assert info["arch"] == "vit_small_patch14_dinov2" and info["img_size"] == 28
    # differences stay within a student: the ViT's KD against the ViT's finetune
    assert ("kd@vits14", "finetune@vits14") in [(d["row"], d["against"]) for d in results["differences"]]
    assert ("kd+mixup-0.5x", "kd") in [(d["row"], d["against"]) for d in results["differences"]]
    table = (tmp_path / "out" / compare.RESULTS_MD).read_text()
    assert "| KD + Mixup, 0.5× pool · resnet10t | probed (100.0) |" in table and "| 64 (0.5×) | — |" in table
    assert "| KD on real images · vit_small_patch14_dinov2 |" in table


def test_a_text_prompted_release_is_a_row_of_its_own(tmp_path, release):
    """A release of generator kind sd-text (a dash in the name) beside the mixup release: its own row,
    reading only its mixes, in the paper's order (before the image-conditioned generators)."""
    from trainer.synthetic import write_release

    text = write_release(tmp_path / "text", classes=4, train_per_class=8, val_per_class=4, mixes=32, views=3,
                         store_size=40, shard_size=32, generator="sd-text", real_shards=False)
    rows, _ = plan(tmp_path, release, teachers=[{"name": "probed", "releases": [str(release), str(text)]}])
    by_id = {r.id: r for r in rows}
    assert [r.id for r in rows] == ["finetune", "kd", "kd+mixup", "kd+sd-text"]
    row = by_id["kd+sd-text"]
    assert row.label == "KD + SD text prompts (class names)" and row.config.data.generators == ["sd-text"]
    assert [s.url for s in open_releases([str(release), str(text)]).mix_pool(["sd-text"], 1.0)] == \
        [s.url for s in open_releases([str(text)]).shards("mix", "train")]

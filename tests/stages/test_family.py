"""Several generators for one task under one teacher (`generator.kinds`), through the real stages on
the small demo release: the job folder keeps its shards byte for byte, each other generator gets a
release of the same mixes (pairs, weights, seeds, views) labelled by the same teacher head, each
manifest records the family, and the trainer and `tsd compare` pick the mixes by generator."""
from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_job
from pipeline.contract.configlib import ConfigError
from pipeline.contract.layout import HEAD_FILE, INDEX, MANIFEST, SHARD_SUFFIX
from pipeline.contract.samples import SampleMeta
from pipeline.contract.shards import read_shard
from pipeline.stages.distribute import generate_stage
from pipeline.stages.jobdir import GENERATORS_DIR, member_job
from pipeline.stages.plan import plan_stage
from pipeline.stages.release import release_stage, teacher_record
from pipeline.tools.verify import verify_release
from trainer import compare
from trainer.config import TrainConfig, check_releases

KINDS = ["image-mixer", "mixup", "cutmix"]


@pytest.fixture(scope="module")
def family(small_release, tmp_path_factory):
    """The small release's job folder, copied, then rerun with generator.kinds: only the new
    generators' shards are made (the job folder's own are reused)."""
    out = tmp_path_factory.mktemp("family") / "rel"
    shutil.copytree(small_release["root"], out)
    job = load_job(small_release["job_path"], {"generator": {"kinds": KINDS}})
    _, reused = plan_stage(job, out)
    summary = generate_stage(job, out, progress=False)
    released = release_stage(job, out)
    return job, out, released, reused, summary


def _manifest(root):
    return json.loads((root / MANIFEST).read_text())


def test_members_hold_the_same_mixes_by_another_generator(family, small_release):
    job, out, released, reused, summary = family
    manifest = _manifest(out)
    assert released.counts == manifest["counts"] and released.shards == len(manifest["shards"])
    assert [kind for kind, _ in released.members] == KINDS[1:] and released.missing == ()
    base = small_release["manifest"]
    assert reused  # the job folder's plan is the same plan
    assert {s["name"]: s["sha256"] for s in manifest["shards"]} == {s["name"]: s["sha256"] for s in base["shards"]}
    n_mix = base["counts"]["mix/train"]
    assert summary.done == 2 * sum(1 for s in base["shards"] if s["kind"] == "mix")  # only the members' shards
    # one pool for the whole family: each worker loaded the teacher once, not once per release
    assert 1 <= summary.workers <= job.generate.workers
    assert summary.teacher_loads == summary.workers
    mixes = pq.read_table(out / INDEX).to_pandas().query("kind == 'mix'").set_index("uid")
    for kind in KINDS[1:]:
        root = out / GENERATORS_DIR / kind
        member = _manifest(root)
        assert member["generator"]["kind"] == kind and member["generator"]["files"] == {}
        assert member["counts"] == {"real/train": 0, "real/val": 0, "mix/train": n_mix}
        assert member["teacher"]["head_sha256"] == manifest["teacher"]["head_sha256"]
        # the family shares one teacher record: what the member's own would be
        assert member["teacher"] == teacher_record(member_job(job, kind), root) == manifest["teacher"]
        assert (root / HEAD_FILE).read_bytes() == (out / HEAD_FILE).read_bytes()
        assert member["family"]["real"] == "../.." and member["family"]["generators"][kind] == "."
        assert member["family"]["generators"]["image-mixer"] == "../.."
        index = pq.read_table(root / INDEX).to_pandas().set_index("uid")
        assert sorted(index.index) == sorted(mixes.index)
        assert (index["weight"] == mixes.loc[index.index, "weight"]).all()
        assert (index["parents"].map(list) == mixes.loc[index.index, "parents"].map(list)).all()
        first = next(s for s in member["shards"])
        _, members = next(iter(read_shard(str(root / f"{first['name']}{SHARD_SUFFIX}"))))
        assert SampleMeta.from_json(members["json"]).generator == kind
        assert verify_release(root) == []
    assert manifest["family"] == {"real": ".", "generators": {"image-mixer": ".", "mixup": "generators/mixup",
                                                              "cutmix": "generators/cutmix"},
                                  "teacher": manifest["family"]["teacher"]}
    assert verify_release(out) == []


def test_a_rerun_reuses_the_whole_family(family):
    job, out, _, _, _ = family
    assert plan_stage(job, out)[1] is True
    assert generate_stage(job, out, progress=False).done == 0


def test_a_member_regenerates_without_a_plan_warning(family):
    """A member's plan fingerprint is its own (the job's mixes, for its generator): regenerate
    compares it with the member's, not the job folder's, and the rebuilt mix is the stored one."""
    from pipeline.tools.regenerate import regenerate

    _, out, _, _, _ = family
    root = out / GENERATORS_DIR / "mixup"
    uid = pq.read_table(root / INDEX, columns=["uid"]).column("uid")[0].as_py()
    warnings = []
    results = regenerate(root, [uid], device="cpu", warn=warnings.append)
    assert warnings == []
    assert [(r.uid, r.status) for r in results] == [(uid, "identical")]


def test_the_trainer_and_compare_pick_mixes_by_generator(family, tmp_path):
    job, out, _, _, _ = family
    roots = [str(out)] + [str(out / GENERATORS_DIR / k) for k in KINDS[1:]]
    releases = check_releases(TrainConfig(releases=roots))
    assert releases.generator_kinds() == set(KINDS)
    assert releases.count("real", "train") == _manifest(out)["counts"]["real/train"]  # the members add no real
    config = compare.CompareConfig(teachers=[compare.TeacherReleases("probed", roots)])
    config.data.workers = 1
    rows, budget = compare.row_plan(config)
    assert [r.id for r in rows] == ["finetune", "kd", "kd+mixup", "kd+cutmix", "kd+image-mixer"]
    assert {r.config.optim.steps for r in rows} == {budget.steps}


def test_kinds_are_checked(small_release):
    with pytest.raises(ConfigError, match=r"generator.kinds: must list generator.kind 'image-mixer'"):
        load_job(small_release["job_path"], {"generator": {"kinds": ["mixup", "cutmix"]}})
    with pytest.raises(ConfigError, match="generator.kinds: at most one diffusion generator"):
        load_job(small_release["job_path"], {"generator": {"kinds": ["image-mixer", "unclip"]}})


def test_the_dry_run_counts_every_generator(small_release):
    from pipeline.stages.estimate import estimate

    one = estimate(load_job(small_release["job_path"]))
    every = estimate(load_job(small_release["job_path"], {"generator": {"kinds": KINDS}}))
    assert every["counts"]["mix/train"] == 3 * one["counts"]["mix/train"]
    assert every["shards"]["mix/train"] == 3 * one["shards"]["mix/train"]
    # mixup and cutmix cost no GPU time; the teacher labels all three pools
    assert every["gpu_seconds"]["target"]["mix"] == pytest.approx(one["gpu_seconds"]["target"]["mix"])
    assert every["gpu_seconds"]["target"]["teacher"] > one["gpu_seconds"]["target"]["teacher"]


def test_viz_mixes_shows_every_generators_mixes_with_their_parents(family, tmp_path):
    """A member holds mixes only: the contact sheet finds their parents in the release `family.real` names."""
    from PIL import Image

    from pipeline.tools.viz import plot_mixes

    _, out, _, _, _ = family
    for kind in ("mixup", "cutmix"):
        png = plot_mixes(out / GENERATORS_DIR / kind, tmp_path / f"{kind}.png", rows=2)
        with Image.open(png) as im:
            assert im.format == "PNG" and im.height > 400

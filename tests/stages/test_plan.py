"""The plan is deterministic to the byte and follows the configured pairing, weight law and pool."""
from pipeline.config import load_job
from pipeline.contract.layout import shard_kind_split
from pipeline.stages.plan import write_plan


class Planned(list):
    """The rows of a plan written for the test, with the plan itself."""


def plan_for(small_job, tmp_path, **overrides):
    path = tmp_path / f"plan-{len(list(tmp_path.iterdir()))}.parquet"
    plan = write_plan(load_job(small_job["job_path"], overrides), path)
    rows = Planned(plan.iter_rows())
    rows.plan = plan
    return rows


def test_same_inputs_give_a_byte_identical_plan(small_job, tmp_path):
    job = load_job(small_job["job_path"])
    write_plan(job, tmp_path / "a.parquet")
    write_plan(job, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_another_seed_gives_other_pairs(small_job, tmp_path):
    a = [r.parents for r in plan_for(small_job, tmp_path) if r.kind == "mix"]
    b = [r.parents for r in plan_for(small_job, tmp_path, seed=1) if r.kind == "mix"]
    assert a != b


def test_pairing_modes(small_job, tmp_path):
    labels = {r.uid: r.label for r in plan_for(small_job, tmp_path) if r.kind == "real"}
    for mode, same in (("cross-class", False), ("same-class", True)):
        mixes = [r for r in plan_for(small_job, tmp_path, plan={"pairing": mode}) if r.kind == "mix"]
        assert mixes and all((labels[a] == labels[b]) == same and a != b for a, b in (m.parents for m in mixes))
    anyway = [r for r in plan_for(small_job, tmp_path) if r.kind == "mix"]
    kinds = {labels[m.parents[0]] == labels[m.parents[1]] for m in anyway}
    assert kinds == {True, False}  # 'any' is class-agnostic: both kinds of pairs occur


def test_pool_size_and_weight_laws(small_job, tmp_path):
    n_train = sum(1 for r in plan_for(small_job, tmp_path) if r.kind == "real" and r.split == "train")
    mixes = lambda **o: [r for r in plan_for(small_job, tmp_path, **o) if r.kind == "mix"]  # noqa: E731
    assert len(mixes(plan={"pool_size": 7})) == 7
    assert len(mixes(plan={"pool_size": "2x"})) == 2 * n_train
    assert len(mixes(plan={"pool_size": 0})) == 0
    assert {m.weight for m in mixes(plan={"weight_law": "fixed", "weight": 0.3})} == {0.3}
    beta = [m.weight for m in mixes(plan={"weight_law": "beta", "beta_a": 0.2, "pool_size": 200})]
    assert sum(w < 0.1 or w > 0.9 for w in beta) > 100  # beta(0.2, 0.2) puts most mass near 0 and 1


def test_views_and_shards(small_job, tmp_path):
    rows = plan_for(small_job, tmp_path)
    job = load_job(small_job["job_path"])
    for r in rows:
        k = job.views.k if r.split == "train" else 1
        assert len(r.views) == k
        for x, y, w, h, flip in r.views:
            assert 0 <= x and 0 <= y and x + w <= 1 + 1e-6 and y + h <= 1 + 1e-6 and w > 0 and h > 0
            assert flip in (0, 1)
        assert shard_kind_split(r.shard) == (r.kind, r.split)
    sizes = {name: len(rows.plan.rows(name)) for name in rows.plan.shard_names()}
    assert max(sizes.values()) <= job.generate.shard_size
    assert sizes == {n: rows.plan.shard_rows(n) for n in sizes}  # the footer's directory matches the row groups
    assert [r.shard for r in rows] == [n for n in sizes for _ in range(sizes[n])]


def test_block_draws_equal_the_one_call_at_a_time_loop():
    """Pairs and weights are drawn in blocks; the stream (and what is drawn after) is the loop's."""
    import numpy as np

    from pipeline.stages.draws import _any_pairs

    for n, count in ((2, 50), (3, 7), (500, 1000)):
        rng, ref = np.random.Generator(np.random.PCG64(n)), np.random.Generator(np.random.PCG64(n))
        pairs = []
        while len(pairs) < count:
            a, b = int(ref.integers(n)), int(ref.integers(n))
            if a != b:
                pairs.append((a, b))
        assert _any_pairs(rng, n, count).tolist() == [list(p) for p in pairs]
        assert rng.uniform(0, 1, size=5).tolist() == [ref.uniform(0, 1) for _ in range(5)]
        assert rng.beta(0.2, 0.2, size=5).tolist() == [ref.beta(0.2, 0.2) for _ in range(5)]


def test_a_segmentation_index_plans_class_agnostic_mixes_and_refuses_class_pairing(small_job, tmp_path):
    import pytest

    from pipeline.contract.configlib import ConfigError
    from pipeline.sources.ingest import ingest
    from pipeline.testing.toydata import write_toy_segmentation

    write_toy_segmentation(tmp_path / "scenes", train=6, val=2, size=32)
    index = ingest(tmp_path / "scenes", tmp_path / "ingest", workers=1).index
    rows = plan_for(small_job, tmp_path, data={"index": index, "classes": []})
    assert sum(r.kind == "mix" for r in rows) > 0
    assert {(r.label, r.class_name) for r in rows if r.kind == "real"} == {(-1, None)}
    for overrides in ({"pairing": "same-class"}, {"pairing": "cross-class"}):
        with pytest.raises(ConfigError, match="a segmentation index has none"):
            plan_for(small_job, tmp_path, data={"index": index, "classes": []}, plan=overrides)

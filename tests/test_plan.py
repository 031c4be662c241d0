"""The plan is deterministic to the byte and follows the configured pairing, weight law and pool."""
from pipeline.config import load_job
from pipeline.contract.layout import shard_kind_split
from pipeline.stages.plan import make_plan, write_plan


def plan_for(small_release, **overrides):
    return make_plan(load_job(small_release["job_path"], overrides))


def test_same_inputs_give_a_byte_identical_plan(small_release, tmp_path):
    job = load_job(small_release["job_path"])
    write_plan(make_plan(job), tmp_path / "a.parquet")
    write_plan(make_plan(job), tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_another_seed_gives_other_pairs(small_release):
    a = [r.parents for r in plan_for(small_release).rows if r.kind == "mix"]
    b = [r.parents for r in plan_for(small_release, seed=1).rows if r.kind == "mix"]
    assert a != b


def test_pairing_modes(small_release):
    labels = {r.uid: r.label for r in plan_for(small_release).rows if r.kind == "real"}
    for mode, same in (("cross-class", False), ("same-class", True)):
        mixes = [r for r in plan_for(small_release, plan={"pairing": mode}).rows if r.kind == "mix"]
        assert mixes and all((labels[a] == labels[b]) == same and a != b for a, b in (m.parents for m in mixes))
    anyway = [r for r in plan_for(small_release).rows if r.kind == "mix"]
    kinds = {labels[m.parents[0]] == labels[m.parents[1]] for m in anyway}
    assert kinds == {True, False}  # 'any' is class-agnostic: both kinds of pairs occur


def test_pool_size_and_weight_laws(small_release):
    n_train = sum(1 for r in plan_for(small_release).rows if r.kind == "real" and r.split == "train")
    mixes = lambda **o: [r for r in plan_for(small_release, **o).rows if r.kind == "mix"]  # noqa: E731
    assert len(mixes(plan={"pool_size": 7})) == 7
    assert len(mixes(plan={"pool_size": "2x"})) == 2 * n_train
    assert len(mixes(plan={"pool_size": 0})) == 0
    assert {m.weight for m in mixes(plan={"weight_law": "fixed", "weight": 0.3})} == {0.3}
    beta = [m.weight for m in mixes(plan={"weight_law": "beta", "beta_a": 0.2, "pool_size": 200})]
    assert sum(w < 0.1 or w > 0.9 for w in beta) > 100  # beta(0.2, 0.2) puts most mass near 0 and 1


def test_views_and_shards(small_release):
    plan = plan_for(small_release)
    job = load_job(small_release["job_path"])
    for r in plan.rows:
        k = job.views.k if r.split == "train" else 1
        assert len(r.views) == k
        for x, y, w, h, flip in r.views:
            assert 0 <= x and 0 <= y and x + w <= 1 + 1e-6 and y + h <= 1 + 1e-6 and w > 0 and h > 0
            assert flip in (0, 1)
        assert shard_kind_split(r.shard) == (r.kind, r.split)
    sizes = [len(rows) for rows in plan.shards().values()]
    assert max(sizes) <= job.generate.shard_size

"""A text-prompted release (sd-text), made in-process by plan → probe → the shard worker → release:
it verifies, `tsd regenerate` rebuilds a prompted sample byte-identical, and the index names its prompted class."""
import pyarrow.parquet as pq
import pytest

from pipeline.contract.layout import INDEX
from pipeline.stages.jobdir import JobFolder, plan_path
from pipeline.stages.plan import plan_fingerprint, write_plan
from pipeline.stages.probe import run_probe
from pipeline.stages.release import write_release
from pipeline.stages.worker import ShardWorker
from pipeline.tools.regenerate import regenerate
from pipeline.tools.verify import verify_release
from pipeline.tools.viz import pick_mixes
from sd_text import sd_text_job


def test_a_prompted_sample_regenerates_byte_identical(small_job, tmp_path, monkeypatch):
    job = sd_text_job(small_job["job_path"], tmp_path / "models", pool_size=4)
    root = tmp_path / "release"
    plan = write_plan(job, plan_path(root), job_fingerprint=plan_fingerprint(job))
    run_probe(job, root, device="cpu")
    worker = ShardWorker(job, root, device="cpu")
    makers = JobFolder(job, str(root)).makers(plan.fingerprint)
    for name in plan.shard_names():
        worker.run_shard(name, plan.rows(name), makers)
    worker.close()
    write_release(job, root, plan)
    assert verify_release(root) == []

    index = pq.read_table(root / INDEX).to_pylist()
    mixes = [r for r in index if r["kind"] == "mix"]
    planned = {r.uid: r for r in plan.iter_rows() if r.kind == "mix"}
    assert len(mixes) == 4 and all(r["label"] == -1 and r["class_name"] == planned[r["uid"]].class_name
                                   for r in mixes)
    assert pick_mixes(index, 4, seed=0) == []   # the parents' contact sheet has nothing to show here
    # the card declares the prompt fields: `datasets` reads them (and real samples' as null)
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    mix = datasets.load_dataset(str(root), "mix", cache_dir=str(tmp_path / "hf"))["train"]
    assert {r["json"]["uid"]: r["json"]["prompt_class"] for r in mix} == {r["uid"]: r["class_name"] for r in mixes}
    real = datasets.load_dataset(str(root), "real", cache_dir=str(tmp_path / "hf"))["validation"]
    assert real[0]["json"]["prompt"] is None   # the parents' contact sheet has nothing to show here
    results = regenerate(root, [mixes[0]["uid"], mixes[3]["uid"]], device="cpu", warn=lambda m: None)
    assert [r.status for r in results] == ["identical", "identical"], [r.line() for r in results]
    assert "json" in results[0].identical and len(results[0].identical) >= 3   # image, json, teacher logits

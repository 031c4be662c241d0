"""The shard worker without Ray: same bytes as the distributed run, failures recorded per sample."""
import json
import shutil
from dataclasses import replace

import torch
from safetensors.torch import load_file, save_file

from pipeline.config import load_job
from pipeline.contract.layout import MANIFEST, TEACHER_DIR
from pipeline.stages import jobdir as stages
from pipeline.stages.plan import read_plan
from pipeline.stages.worker import ShardWorker


def test_worker_alone_reproduces_the_distributed_shards(small_release, tmp_path):
    root = small_release["root"]
    job = load_job(small_release["job_path"])
    plan = read_plan(stages.plan_path(root))
    shutil.copytree(root / TEACHER_DIR, tmp_path / TEACHER_DIR)
    worker = ShardWorker(job, tmp_path, device="cpu")
    manifest = json.loads((root / MANIFEST).read_text())
    picked = [s for s in manifest["shards"] if s["name"].startswith(("mix/", "real/val"))][:2]
    for shard in picked:
        stats = worker.run_shard(shard["name"], plan.rows(shard["name"]),
                                 stages.JobFolder(job, str(tmp_path)).makers(plan.fingerprint))
        assert stats["sha256"] == shard["sha256"], shard["name"]
    worker.close()


def test_bad_parents_and_nan_images_are_recorded_and_the_rest_goes_on(small_release, tmp_path):
    root = small_release["root"]
    job = load_job(small_release["job_path"])
    mixes = [r for r in read_plan(stages.plan_path(root)).iter_rows() if r.kind == "mix"][:3]
    mixes[1] = replace(mixes[1], parent_paths=[mixes[1].parent_paths[0], str(tmp_path / "gone.jpg")])
    shutil.copytree(root / TEACHER_DIR, tmp_path / TEACHER_DIR)
    worker = ShardWorker(job, tmp_path, device="cpu")
    out = worker.make_samples(mixes)
    assert [m.failure is None for m in out] == [True, False, True]
    assert "unreadable parent" in out[1].failure and "file not found" in out[1].failure
    stats = worker.run_shard("mix/mix-000000", mixes, stages.JobFolder(job, str(tmp_path)).makers("test"))
    assert stats["count"] == 2 and stats["planned"] == 3 and stats["failures"][0]["uid"] == mixes[1].uid
    worker.close()

    # a generator whose weights hold a NaN yields non-finite images: each one is a recorded failure
    model = tmp_path / "broken-mixer"
    shutil.copytree(job.generator.path, model)
    weights = model / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.startswith("decoder.conv_out.weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, weights)
    broken = load_job(small_release["job_path"], {"generator": {"path": str(model)}})
    worker = ShardWorker(broken, tmp_path, device="cpu")
    out = worker.make_samples(mixes[:1])
    assert out[0].members is None and "non-finite" in out[0].failure
    worker.close()

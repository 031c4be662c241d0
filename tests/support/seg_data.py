"""A tiny segmentation job for the generation tests: the procedural scenes (`testing.toydata`, masks
from the shapes drawn) ingested by `tsd ingest`'s pairs layout, and a job of tiny random-weight
models (the teacher at 56 px: a 4×4 patch grid; pixel-space mixes, no diffusion model)."""
from pathlib import Path

from pipeline.contract.configlib import dump
from pipeline.sources.ingest import ingest
from pipeline.testing.tiny import TinySizes, build_teacher
from pipeline.testing.toydata import SEG_CLASSES, write_toy_segmentation

SEG_NUM_CLASSES = len(SEG_CLASSES)


def write_seg_index(root: Path, train: int = 12, val: int = 4) -> Path:
    """Scenes under root/source, ingested into root/ingest; the index's path."""
    write_toy_segmentation(root / "source", train=train, val=val, size=48)
    return Path(ingest(root / "source", root / "ingest", workers=1).index)


def seg_job(root: Path, index: Path, **overrides) -> Path:
    """The job file of a tiny segmentation job."""
    tiny = TinySizes()
    teacher = build_teacher(root / "models", tiny)
    config = {
        "seed": 0,
        "data": {"index": str(index), "store_size": 40, "image_format": "png"},
        "teacher": {"arch": tiny.teacher_arch, "weights": str(teacher), "img_size": tiny.teacher_img,
                    "model_kwargs": dict(tiny.teacher_kwargs), "batch_size": 64, "dtype": "fp32"},
        "probe": {"views": 2, "epochs": 30, "lr": 0.01, "batch_size": 16},
        "views": {"k": 2, "scale": [0.35, 1.0]},
        "plan": {"pool_size": "0.5x", "pairing": "any", "weight_law": "uniform"},
        "generator": {"kind": "mixup", "size": 48},
        "generate": {"shard_size": 8, "workers": 1, "cpus_per_worker": 1},
        "release": {"name": "seg-test", "license": "cc0-1.0"},
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return dump(config, root / "job.yaml")


def generate_shards(job, out: Path, plan=None) -> None:
    """Every planned shard through the shard worker (what a Ray actor runs), on the CPU."""
    from pipeline.stages.jobdir import JobFolder, plan_path
    from pipeline.stages.plan import read_plan
    from pipeline.stages.worker import ShardWorker

    plan = plan or read_plan(plan_path(out))
    worker = ShardWorker(job, out, device="cpu")
    try:
        for name in plan.shard_names():
            worker.run_shard(name, plan.rows(name), JobFolder(job, str(out)).makers(plan.fingerprint))
    finally:
        worker.close()


def build_seg_release(root: Path, **overrides) -> dict:
    """ingest → probe → plan → generate (the worker) → release of the tiny segmentation job in root
    (`overrides`: of its job's sections, as `seg_job` takes them)."""
    from pipeline.config import load_job
    from pipeline.stages.plan import plan_stage
    from pipeline.stages.probe import probe_stage
    from pipeline.stages.release import release_stage

    job_path = seg_job(root, write_seg_index(root), **overrides)
    job = load_job(job_path)
    out = root / "release"
    probe, _ = probe_stage(job, out, "cpu")
    plan_stage(job, out)
    generate_shards(job, out)
    release_stage(job, out)
    return {"root": root, "out": out, "job": job, "job_path": job_path, "probe": probe}


def shard_samples(out: Path, shard: str) -> dict:
    """{uid: members} of one shard of a release."""
    from pipeline.contract.shards import read_shard

    with open(out / f"{shard}.tar", "rb") as f:
        return dict(read_shard(f))

"""Release: the manifest, the sample index and the dataset card, from the plan and the shard stats."""
from __future__ import annotations

import subprocess
from pathlib import Path

from .. import __version__
from ..config import JobConfig, add_job_arguments, load_job_args
from ..contract.configlib import to_dict
from ..contract.errors import UserError
from ..contract.files import read_json, write_if_changed
from ..contract.ids import sha256_file
from ..contract.layout import CARD, HEAD_FILE, INDEX, PROBE_METRICS, shard_kind_split
from ..contract.manifest import new_manifest, write_manifest
from ..contract.shards import read_stats
from .jobdir import plan_path
from .plan import Plan, read_plan


def code_version() -> str:
    """Package version, plus the git commit when run from a checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
            return f"tsdistill {__version__}+g{rev.stdout.strip()}{'.dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"tsdistill {__version__}"


def collect_stats(root: Path, plan: Plan) -> dict[str, dict]:
    stats, missing = {}, []
    for name in sorted(plan.shards()):
        s = read_stats(root, name, plan.fingerprint)
        if s is None:
            missing.append(name)
        else:
            stats[name] = s
    if missing:
        raise UserError(f"{len(missing)} planned shard(s) are not generated yet "
                           f"(first: {missing[0]}); run `tsd generate` first")
    return stats


def teacher_record(job: JobConfig, root: Path) -> dict:
    from ..models.teacher import describe_backbone, weights_identity

    probe = read_json(root / PROBE_METRICS) or {}
    return {"arch": job.teacher.arch, "img_size": job.teacher.img_size, "model_kwargs": job.teacher.model_kwargs,
            **describe_backbone(job.teacher),
            "logits": job.generate.logits, "topk": job.generate.topk if job.generate.logits == "topk" else None,
            "features": job.generate.features, "weights": weights_identity(job.teacher),
            "head_sha256": sha256_file(root / HEAD_FILE), "head": job.probe.head,
            "val_top1": probe.get("val_top1")}


def generator_record(job: JobConfig) -> dict | None:
    g = job.generator
    if g is None:
        return None
    rec = {k: v for k, v in to_dict(g).items() if k not in ("path", "compile", "batch_size")}
    rec["files"] = {}
    if g.path:
        root = Path(g.path)
        rec["files"] = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
                        if p.is_file() and p.suffix in (".safetensors", ".bin", ".ckpt", ".json")}
    return rec


def build_manifest(job: JobConfig, root: Path, plan: Plan, stats: dict[str, dict]) -> dict:
    counts = {"real/train": 0, "real/val": 0, "mix/train": 0}
    shards, failures = [], []
    for name, s in stats.items():
        kind, split = shard_kind_split(name)
        counts[f"{kind}/{split}"] += s["count"]
        shards.append({"name": name, "kind": kind, "split": split, "count": s["count"],
                       "bytes": s["bytes"], "sha256": s["sha256"]})
        failures += [dict(f, shard=name) for f in s["failures"]]
    return new_manifest({
        "name": job.release.name,
        "code_version": code_version(),
        "seed": job.seed,
        "plan_fingerprint": plan.fingerprint,
        "config": to_dict(job),
        "classes": plan.classes,
        "num_classes": len(plan.classes),
        "image": {"format": job.data.image_format, "quality": job.data.quality, "store_size": job.data.store_size},
        "views": to_dict(job.views),
        "teacher": teacher_record(job, root),
        "generator": generator_record(job),
        "counts": counts,
        "shards": shards,
        "failures": failures,
    })


def index_rows(plan: Plan, stats: dict[str, dict]) -> list[dict]:
    records = {r["uid"]: r for s in stats.values() for r in s["samples"]}
    rows = []
    for r in plan.rows:
        rec = records.get(r.uid)
        if rec is None:  # a failed sample: listed in manifest.failures, not in the index
            continue
        rows.append({"uid": r.uid, "split": r.split, "kind": r.kind, "shard": r.shard,
                     "label": r.label, "class_name": r.class_name, "parents": list(r.parents or []),
                     "weight": r.weight, "seed": r.seed, "n_views": len(r.views),
                     "teacher_top1": rec["teacher_top1"], "teacher_entropy": rec["teacher_entropy"]})
    return rows


def index_schema():
    import pyarrow as pa

    return pa.schema([
        ("uid", pa.string()), ("split", pa.string()), ("kind", pa.string()), ("shard", pa.string()),
        ("label", pa.int32()), ("class_name", pa.string()), ("parents", pa.list_(pa.string())),
        ("weight", pa.float64()), ("seed", pa.int64()), ("n_views", pa.int32()),
        ("teacher_top1", pa.int32()), ("teacher_entropy", pa.float64()),
    ])


def write_index(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=index_schema()), sink, compression="zstd")
    write_if_changed(path, sink.getvalue().to_pybytes())


def write_release(job: JobConfig, root: str | Path, plan: Plan) -> dict:
    """Write manifest.json, index.parquet and README.md for the generated shards; return the manifest."""
    from .card import dataset_card

    root = Path(root)
    stats = collect_stats(root, plan)
    manifest = build_manifest(job, root, plan, stats)
    write_index(index_rows(plan, stats), root / INDEX)
    write_if_changed(root / CARD, dataset_card(manifest).encode())
    return write_manifest(root, manifest)


def release_stage(job: JobConfig, out: str | Path) -> dict:
    """The release files of the job folder `out`, from its plan and generated shards."""
    return write_release(job, out, read_plan(plan_path(out)))


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    add_job_arguments(p)


def run(args) -> int:
    m = release_stage(load_job_args(args), args.out)
    counts = ", ".join(f"{k} {v}" for k, v in m["counts"].items())
    print(f"release: {args.out}: {counts}; {len(m['shards'])} shards, {len(m['failures'])} failed samples")
    return 0

"""The stages as functions over a job folder, each skipping work that is already done.

A job folder is the release itself (manifest.json, index.parquet, README.md, teacher/, real/,
mix/) plus `work/` for what only the pipeline needs (the plan, stage markers)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import format as fmt
from .config import JobConfig
from .configlib import to_dict

WORK = "work"


def plan_path(out: str | Path) -> Path:
    return Path(out) / WORK / "plan.parquet"


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _marker(out: Path, stage: str) -> Path:
    return out / WORK / f"{stage}.done.json"


def _is_done(out: Path, stage: str, fingerprint: str) -> dict | None:
    path = _marker(out, stage)
    if path.is_file():
        done = json.loads(path.read_text())
        if done.get("fingerprint") == fingerprint:
            return done
    return None


def _mark_done(out: Path, stage: str, fingerprint: str, result: dict) -> None:
    from .shards import atomic_write

    atomic_write(_marker(out, stage), json.dumps({"fingerprint": fingerprint, "result": result},
                                                  indent=1, sort_keys=True).encode())


def probe(job: JobConfig, out: str | Path, device: str = "auto", force: bool = False) -> tuple[dict, bool]:
    """(metrics, reused) — the teacher head is refit only when its inputs changed."""
    from .probe import run_probe

    out = Path(out)
    weights = fmt.sha256_file(job.teacher.weights) if job.teacher.weights else None
    fp = _fingerprint(to_dict(job.teacher, paths=False), to_dict(job.probe), to_dict(job.data, paths=False),
                      to_dict(job.views), job.seed, fmt.sha256_file(job.data.index), weights)
    if not force and (done := _is_done(out, "probe", fp)) and (out / fmt.HEAD_FILE).is_file():
        return done["result"], True
    metrics = run_probe(job, out, device)
    _mark_done(out, "probe", fp, metrics)
    return metrics, False


def plan(job: JobConfig, out: str | Path, force: bool = False):
    """(plan, reused) — plan.parquet is rewritten only when its fingerprint changed."""
    from .plan import make_plan, plan_fingerprint, read_plan, write_plan

    path = plan_path(out)
    if not force and path.is_file():
        existing = read_plan(path)
        if existing.fingerprint == plan_fingerprint(job):
            return existing, True
    new = make_plan(job)
    write_plan(new, path)
    return new, False


def generate(job: JobConfig, out: str | Path, address: str | None = None, device: str = "auto",
             progress: bool = True) -> dict:
    from .distribute import run_generate

    if not (Path(out) / fmt.HEAD_FILE).is_file():
        raise FileNotFoundError(f"{Path(out) / fmt.HEAD_FILE}: no teacher head (run `tsd probe` first)")
    return run_generate(job, out, plan_path(out), address=address, device=device, progress=progress)


def release(job: JobConfig, out: str | Path) -> dict:
    from .plan import read_plan
    from .release import write_release

    return write_release(job, out, read_plan(plan_path(out)))

"""A job folder: the release itself (manifest.json, index.parquet, README.md, teacher/, real/,
mix/) plus `work/` for what only the pipeline needs: the plan, and a marker per finished stage
(`contract.files.reuse`: a stage is redone only when its inputs changed)."""
from __future__ import annotations

from pathlib import Path

WORK = "work"


def work_dir(out: str | Path) -> Path:
    return Path(out) / WORK


def plan_path(out: str | Path) -> Path:
    return work_dir(out) / "plan.parquet"


def marker(out: str | Path, stage: str) -> Path:
    return work_dir(out) / f"{stage}.done.json"

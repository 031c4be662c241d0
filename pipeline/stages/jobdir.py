"""A job folder: the release itself (manifest.json, index.parquet, README.md, teacher/, real/,
mix/) plus `work/` for what only the pipeline needs: the plan, and a marker per finished stage
(`contract.files.reuse`: a stage is redone only when its inputs changed).

A job folder is a local path or an fsspec URL (`s3://bucket/releases/cub200`): every path here is
built with `contract.storage.join`, never with `pathlib`, which would fold 's3://' into 's3:/'."""
from __future__ import annotations

from ..contract import storage

WORK = "work"
def work_dir(out) -> str:
    return storage.join(out, WORK)


def plan_path(out) -> str:
    return storage.join(work_dir(out), "plan.parquet")


def marker(out, stage: str) -> str:
    return storage.join(work_dir(out), f"{stage}.done.json")

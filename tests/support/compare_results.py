"""A compare folder as `tsd compare` leaves it for a reader (trainer/compare.py's results.json: the keys
the report reads), for tests of what reads it without training a compare."""
from __future__ import annotations

import json
from pathlib import Path


def write_compare_folder(path: Path, metric: dict | None, values: list[float]) -> Path:
    """path/results.json with one KD row of `values` per seed under `val_<metric key>`; `metric` None
    writes it as before segmentation (no `metric`: top-1)."""
    key = (metric or {"key": "top1"})["key"]
    row = {"id": "kd-real", "label": "KD on real images", "teacher": "probed", "mean": sum(values) / len(values),
           "std": 0.01, f"val_{key}": values, "seeds": list(range(len(values))), "steps": 4, "real_images": 64,
           "mix_images": 0, "runs": []}
    results = {"budget": {"steps": 4}, "std": "sample standard deviation over the seeds (n - 1)",
               "student": "resnet10t", "rows": [row], **({"metric": metric} if metric else {})}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results))
    return path

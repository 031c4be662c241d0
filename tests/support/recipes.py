"""Stand-ins that let a recipe under manifests/ load here, before its data and weights exist."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml


def write_ingest_index(path: Path, train: int = 12, val: int = 4, classes: int = 3) -> Path:
    """A small ingest index (the columns `tsd ingest` writes) for jobs whose data is not here."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"class{c}" for c in range(classes)]
    rows = [{"uid": f"{i:032x}", "path": f"/nowhere/{i}.jpg", "relpath": f"{i}.jpg", "label": i % classes,
             "class_name": names[i % classes], "split": "train" if i < train else "val", "sha256": "0" * 64,
             "width": 500, "height": 375} for i in range(train + val)]
    table = pa.Table.from_pylist(rows).replace_schema_metadata({b"tsdistill.classes": json.dumps(names).encode()})
    pq.write_table(table, path)
    return path


def localise(data: dict, tmp: Path) -> dict:
    """The manifest with each /data/... file replaced by a stand-in under tmp: an ingest index for
    data.index, an empty folder for generator.path, an empty safetensors file for weights. Releases stay."""
    data = copy.deepcopy(data)
    if "data" in data and "index" in data["data"]:
        data["data"]["index"] = str(write_ingest_index(tmp / "index.parquet"))
    if (data.get("generator") or {}).get("path"):
        (tmp / "generator").mkdir(exist_ok=True)
        data["generator"]["path"] = str(tmp / "generator")
    # a compare's further students (`students: [{name, student}]`) name weight files too
    sections = [data.get("teacher"), data.get("student")] + [s.get("student") for s in data.get("students") or ()]
    for i, section in enumerate(sections):
        if (section or {}).get("weights"):
            stand_in = tmp / f"{i}-{Path(section['weights']).name}"
            stand_in.write_bytes(b"\x02" + b"\x00" * 7 + b"{}")   # an empty safetensors file: a header, no tensor
            section["weights"] = str(stand_in)
    return data


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path

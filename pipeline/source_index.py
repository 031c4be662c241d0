"""Reading the ingested index (index.parquet from `tsd ingest`) for the later stages."""
from __future__ import annotations

import json
from dataclasses import dataclass

from .config import DataConfig
from .configlib import ConfigError

COLUMNS = ("uid", "path", "relpath", "label", "class_name", "split", "sha256", "width", "height")


@dataclass
class SourceIndex:
    classes: list[str]
    rows: list[dict]          # sorted by uid; labels index into `classes`
    limits: dict              # the decoding limits ingest used: later stages decode with the same

    def split(self, name: str) -> list[dict]:
        return [r for r in self.rows if r["split"] == name]


def read_source_index(data: DataConfig) -> SourceIndex:
    """Rows of the ingested index, restricted to `data.classes` when given (labels re-indexed)."""
    import pyarrow.parquet as pq

    table = pq.read_table(data.index)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ConfigError(f"{data.index}: not an ingest index (missing column {missing[0]!r})")
    meta = table.schema.metadata or {}
    classes = json.loads(meta[b"tsdistill.classes"]) if b"tsdistill.classes" in meta \
        else sorted(set(table.column("class_name").to_pylist()))
    rows = table.select(list(COLUMNS)).to_pylist()
    if data.classes:
        keep = {name: i for i, name in enumerate(data.classes)}
        rows = [dict(r, label=keep[r["class_name"]]) for r in rows if r["class_name"] in keep]
        classes = list(data.classes)
    rows.sort(key=lambda r: r["uid"])
    return SourceIndex(classes, rows, _limits(meta))


def _limits(meta: dict) -> dict:
    settings = json.loads(meta.get(b"tsdistill.ingest", b"{}"))
    return {k: settings[k] for k in ("min_size", "max_pixels") if k in settings}


def decode_limits(index_path: str) -> dict:
    """`open_rgb` keyword arguments matching how the index was made (read from its metadata only)."""
    import pyarrow.parquet as pq

    return _limits(pq.read_schema(index_path).metadata or {})

"""The source index: what `tsd ingest` writes and every later stage reads (one schema, one reader).

`index.parquet` has one row per kept image, sorted by uid. Its schema metadata holds the class
list (`CLASSES_KEY`) and the settings it was made with (`SETTINGS_KEY`: min_size, max_pixels,
val_fraction, seed), so later stages decode the files with the limits ingest used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..contract import storage
from ..contract.errors import ConfigError, first_line
from ..contract.files import atomic_write
from ..contract.tasks import CLASSIFICATION, SEGMENTATION, check_task

INDEX_FILE = "index.parquet"
REJECTS_FILE = "rejects.parquet"
CLASSES_FILE = "classes.json"
CLASSES_KEY = b"tsdistill.classes"
SETTINGS_KEY = b"tsdistill.ingest"   # the decoding limits and split settings the index was made with
SOURCE_KEY = b"tsdistill.source"     # the source it was made from (absolute path), for `ingest`'s refusals
TASK_KEY = b"tsdistill.task"         # contract/tasks.py; absent in indexes made before segmentation: classification
# column → Arrow type name, in file order. A segmentation index records each image's mask (path and
# sha256); the label of a segmentation row is -1 (its classes are in its mask). Null for classification.
COLUMNS = {"uid": "string", "path": "string", "relpath": "string", "label": "int32", "class_name": "string",
           "split": "string", "sha256": "string", "width": "int32", "height": "int32",
           "mask_path": "string", "mask_sha256": "string", "source_mode": "string"}
INDEX_COLUMNS = tuple(COLUMNS)
READ_COLUMNS = INDEX_COLUMNS[:-1]    # what later stages use (source_mode is for the user)
MASK_COLUMNS = ("mask_path", "mask_sha256")


def index_schema(classes: list[str], settings: dict, source: str | None = None, task: str = CLASSIFICATION):
    import pyarrow as pa

    metadata = {CLASSES_KEY: json.dumps(classes, ensure_ascii=False).encode(),
                SETTINGS_KEY: json.dumps(settings, sort_keys=True).encode(),
                TASK_KEY: check_task(task).encode()}
    if source is not None:
        metadata[SOURCE_KEY] = source.encode()
    return pa.schema([(name, getattr(pa, kind)()) for name, kind in COLUMNS.items()], metadata=metadata)


def _write_table(path, table) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write(path, sink.getvalue().to_pybytes())


def write_index(path, rows: list[dict], classes: list[str], settings: dict, source: str | None = None,
                task: str = CLASSIFICATION) -> None:
    """Rows lacking the mask columns (classification) get nulls there."""
    import pyarrow as pa

    table = pa.Table.from_pydict({name: [r.get(name) if name in MASK_COLUMNS else r[name] for r in rows]
                                  for name in INDEX_COLUMNS},
                                 schema=index_schema(classes, settings, source, task))
    _write_table(path, table)


def index_origin(path) -> tuple[str | None, dict]:
    """(source, settings) an index was made from, read from its schema metadata only."""
    import pyarrow.parquet as pq

    with storage.open_read(path) as f:
        meta = pq.read_schema(f).metadata or {}
    source = meta.get(SOURCE_KEY)
    return (source.decode() if source is not None else None), json.loads(meta.get(SETTINGS_KEY, b"{}"))


def write_rejects(path, rejects: list[tuple]) -> None:
    import pyarrow as pa

    schema = pa.schema([("path", pa.string()), ("reason", pa.string())])
    table = pa.Table.from_pydict({"path": [p for p, _ in rejects], "reason": [r for _, r in rejects]},
                                 schema=schema)
    _write_table(path, table)


@dataclass
class SourceIndex:
    classes: list[str]
    rows: list[dict]          # sorted by uid; labels index into `classes`
    limits: dict              # the decoding limits ingest used: later stages decode with the same
    task: str = CLASSIFICATION

    def split(self, name: str) -> list[dict]:
        return [r for r in self.rows if r["split"] == name]


def read_source_index(data) -> SourceIndex:
    """Rows of the ingested index `data.index` (a path or a URL), restricted to `data.classes` when
    given (labels re-indexed); `data` is the job's DataConfig."""
    table = read_index_table(data.index)
    meta = table.schema.metadata or {}
    task = index_task_of(meta)
    needed = [c for c in READ_COLUMNS if task == SEGMENTATION or c not in MASK_COLUMNS]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ConfigError(f"{data.index}: not an ingest index (missing column {missing[0]!r})")
    classes = json.loads(meta[CLASSES_KEY]) if CLASSES_KEY in meta \
        else sorted(set(table.column("class_name").to_pylist()))
    rows = table.select(needed).to_pylist()
    if data.classes and task == SEGMENTATION:   # its rows have no class: a filter would drop them all
        raise _no_class_filter(data.index)
    if data.classes:
        keep = {name: i for i, name in enumerate(data.classes)}
        rows = [dict(r, label=keep[r["class_name"]]) for r in rows if r["class_name"] in keep]
        classes = list(data.classes)
    rows.sort(key=lambda r: r["uid"])
    return SourceIndex(classes, rows, _limits(meta), task)


def index_task_of(meta: dict) -> str:
    """The task recorded in an index's schema metadata (classification when none is)."""
    return check_task(meta.get(TASK_KEY, CLASSIFICATION.encode()).decode(), "index task")


def index_task(path) -> str:
    """The task of an index (a path or a URL), from its schema metadata only."""
    import pyarrow.parquet as pq

    try:
        with storage.open_read(path) as f:
            return index_task_of(pq.read_schema(f).metadata or {})
    except FileNotFoundError:
        raise ConfigError(f"{path}: no index (run `tsd ingest` first)") from None


def read_index_table(path, columns: list[str] | None = None):
    """The index's Parquet table (a path or a URL); a missing, truncated or foreign file is one
    ConfigError line."""
    try:
        return read_table(path, columns=columns)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no index (run `tsd ingest` first)") from None
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, KeyError...
        raise ConfigError(f"{path}: not a readable index ({first_line(e)})") from None


def _no_class_filter(path) -> ConfigError:
    return ConfigError(f"data.classes: {path} is a segmentation index (its classes are mask values, every "
                       "image has several); leave data.classes empty")


def index_classes(path: str) -> set[str]:
    """The class names of an index (its class column only); a segmentation index has no class per
    image to select by (ConfigError)."""
    table = read_index_table(path, ["class_name"])
    if index_task_of(table.schema.metadata or {}) == SEGMENTATION:
        raise _no_class_filter(path)
    return set(table.column(0).to_pylist())


def _limits(meta: dict) -> dict:
    settings = json.loads(meta.get(SETTINGS_KEY, b"{}"))
    return {k: settings[k] for k in ("min_size", "max_pixels") if k in settings}


def decode_limits(index_path: str) -> dict:
    """`open_rgb` keyword arguments matching how the index was made (read from its metadata only)."""
    import pyarrow.parquet as pq

    try:
        with storage.open_read(index_path) as f:
            return _limits(pq.read_schema(f).metadata or {})
    except Exception:  # noqa: BLE001 - read_index_table names the damaged file
        read_index_table(index_path)
        raise


def read_table(path, columns: list[str] | None = None):
    """A Parquet file (local or a URL) as an Arrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # From the file's bytes in memory, single-threaded: Arrow reading a Python file object (or even a
    # native file with ParquetFile.read) starts a pool thread, and that pool now and then aborts the
    # interpreter at exit ("terminate called without an active exception", exit 134, after the work is
    # done: apache/arrow#34314; seen with pq.read_table, then with ParquetFile(file).read, under load).
    # From a buffer no thread is started at all. Indexes are small: 1 M rows are tens of MB.
    return pq.ParquetFile(pa.BufferReader(storage.read_bytes(path))).read(columns=columns, use_threads=False)


def index_sha256(path) -> str:
    """The sha256 of an index file (local or a URL): what the plan and the probe depend on."""
    return storage.sha256(path)

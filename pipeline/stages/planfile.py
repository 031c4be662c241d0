"""The plan file, plan.parquet: one row per planned sample (`PlanRow`), one Parquet row group per
shard, and in the footer the classes, the plan's fingerprint and the shard directory, so a reader
learns the shards without reading rows (`read_plan`), then reads one shard's rows when asked."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..contract import storage
from ..contract.errors import UserError, first_line
from ..contract.layout import shard_kind_split
from ..sources.index import CLASSES_KEY

FINGERPRINT_KEY = b"tsdistill.fingerprint"


@dataclass(frozen=True)
class PlanRow:
    """One planned sample, as plan.parquet stores it (the columns, in this order)."""
    uid: str
    split: str
    kind: str                 # real | mix
    shard: str                # e.g. 'mix/mix-000002'
    label: int                # -1 for mixes
    class_name: str | None
    path: str | None          # the source image (real)
    parents: list = field(default_factory=list)       # parent uids (mix)
    parent_paths: list = field(default_factory=list)  # their source images
    weight: float | None = None                       # mixing weight of parents[0]
    seed: int = 0
    width: int = 0            # stored size
    height: int = 0
    views: list = field(default_factory=list)         # K × [x, y, w, h, flip]
    prompt: int | None = None  # prompted mixes (sd-text): the template's index; class_name = the prompted class
    mask_path: str | None = None  # segmentation: the source mask of a real sample (label -1, class_name None)


def plan_schema():
    import pyarrow as pa

    return pa.schema([
        ("uid", pa.string()), ("split", pa.string()), ("kind", pa.string()), ("shard", pa.string()),
        ("label", pa.int32()), ("class_name", pa.string()), ("path", pa.string()),
        ("parents", pa.list_(pa.string())), ("parent_paths", pa.list_(pa.string())),
        ("weight", pa.float64()), ("seed", pa.int64()),
        ("width", pa.int32()), ("height", pa.int32()),      # stored size
        ("views", pa.list_(pa.list_(pa.float64()))),
        ("prompt", pa.int32()),    # added later: a plan without it reads as prompt None
        ("mask_path", pa.string()),  # added later (segmentation); a plan without it reads as None
    ])


PLAN_FORMAT = 2   # one Parquet row group per shard, the shard directory in the footer
SHARDS_KEY = b"tsdistill.shards"     # [[name, rows], ...]: row group i holds shard i


def views_array(views: np.ndarray):
    import pyarrow as pa

    n, k, _ = views.shape
    inner = pa.ListArray.from_arrays(np.arange(0, n * k * 5 + 1, 5, dtype=np.int32), views.reshape(-1))
    return pa.ListArray.from_arrays(np.arange(0, n * k + 1, k, dtype=np.int32), inner)


class Plan:
    """A written plan: classes, fingerprint and the shard directory (from the footer, cheap to read);
    a shard's rows read when asked for (one row group), never all rows at once."""

    def __init__(self, path, classes: list[str], fingerprint: str, shards: list[tuple[str, int]]):
        self.path, self.classes, self.fingerprint = str(path), classes, fingerprint
        self._shards = {name: (i, rows) for i, (name, rows) in enumerate(shards)}
        self._file = None

    def __getstate__(self):  # an open file does not travel to another process
        return dict(self.__dict__, _file=None)

    def _parquet(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._file is None:
            # a local plan memory-mapped: Arrow reads its row groups without a Python file object, so
            # without the pool thread that can abort at exit (see sources.index.read_table)
            source = pa.memory_map(storage.local_path(self.path)) if storage.is_local(self.path) \
                else storage.open_read(self.path)
            self._file = pq.ParquetFile(source)
        return self._file

    def shard_names(self) -> list[str]:
        return list(self._shards)

    def shard_rows(self, name: str) -> int:
        return self._shards[name][1]

    def __len__(self) -> int:
        return sum(rows for _, rows in self._shards.values())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, (_, rows) in self._shards.items():
            kind, split = shard_kind_split(name)
            out[f"{kind}/{split}"] = out.get(f"{kind}/{split}", 0) + rows
        return out

    def table(self, name: str, columns: list[str] | None = None):
        """Shard `name`'s rows as an Arrow table (its row group)."""
        return self._parquet().read_row_group(self._shards[name][0], columns=columns, use_threads=False)  # see index.read_table

    def rows(self, name: str) -> list[PlanRow]:
        return [PlanRow(**r) for r in self.table(name).to_pylist()]

    def iter_rows(self):
        """Every planned sample, shard by shard in plan order."""
        for name in self._shards:
            yield from self.rows(name)


def read_plan(path) -> Plan:
    """The plan at `path` (a local path or a URL): its footer only; rows are read per shard."""
    import pyarrow.parquet as pq

    if not storage.isfile(path):
        raise UserError(f"{path}: no plan (run `tsd plan` first)")
    try:
        with storage.open_read(path) as f:
            meta = pq.read_schema(f).metadata or {}
    except Exception as e:  # noqa: BLE001 - pyarrow's errors on a damaged file, or a foreign one
        raise UserError(f"{path}: not a readable plan ({first_line(e)}); make it again with `tsd plan`") from None
    if SHARDS_KEY not in meta or CLASSES_KEY not in meta or FINGERPRINT_KEY not in meta:
        raise UserError(f"{path}: not a plan of this tsdistill (an older one, or another file): run `tsd plan` again")
    shards = [(name, rows) for name, rows in json.loads(meta[SHARDS_KEY])]
    return Plan(path, json.loads(meta[CLASSES_KEY]), meta[FINGERPRINT_KEY].decode(), shards)

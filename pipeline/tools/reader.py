"""Reading a finished release, for the tools: its manifest, its index, and samples by uid.

The one reader behind verify, regenerate, subset and viz (the trainer streams shards its own way,
through `trainer.data`). Nothing read is ever executed: tars are read member by member into
memory (`contract.shards.read_shard`), the index with pyarrow.
"""
from __future__ import annotations

from pathlib import Path

from ..contract.errors import UserError
from ..contract.layout import INDEX, SHARD_SUFFIX
from ..contract.manifest import read_manifest
from ..contract.shards import read_shard


class ReleaseReader:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)

    def shard_path(self, name: str) -> Path:
        return self.root / f"{name}{SHARD_SUFFIX}"

    def index_table(self, columns: list[str] | None = None):
        import pyarrow.parquet as pq

        path = self.root / INDEX
        if not path.is_file():
            raise UserError(f"{path}: not found (not a release folder?)")
        return pq.read_table(path, columns=columns)

    def index(self) -> list[dict]:
        """index.parquet rows, in file order."""
        return self.index_table().to_pylist()

    def index_by_uid(self) -> dict[str, dict]:
        return {r["uid"]: r for r in self.index()}

    def shard_samples(self, name: str, keep: set[str] | None = None) -> list[tuple[str, dict]]:
        """(uid, members) of one shard, in shard order; only the uids in `keep` when given."""
        path = self.shard_path(name)
        with open(path, "rb") as f:
            return [(key, members) for key, members in read_shard(f, str(path)) if keep is None or key in keep]

    def samples(self, rows: list[dict]) -> dict[str, dict]:
        """{uid: members} for index rows (each with 'uid' and 'shard'), each shard read once."""
        wanted: dict[str, set] = {}
        for row in rows:
            wanted.setdefault(row["shard"], set()).add(row["uid"])
        return {key: members for shard in sorted(wanted) for key, members in self.shard_samples(shard, wanted[shard])}

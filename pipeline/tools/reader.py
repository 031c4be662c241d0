"""Reading a finished release, for the tools: the release as the trainer opens it
(`trainer.release.Release`: the manifest checked, its shards listed), plus its index and samples by uid.

One reader of a release: the tools (regenerate, subset, viz) add the index and random access to the
trainer's (which streams shards its own way, through `trainer.data`). A release is a folder or an
fsspec URL (`contract.storage`). Nothing read is ever executed: tars are read member by member into
memory (`contract.shards.read_shard`), the index with pyarrow.
"""
from __future__ import annotations

from trainer.release import Release

from ..contract import storage
from ..contract.errors import UserError
from ..contract.layout import INDEX
from ..contract.manifest import read_manifest
from ..contract.shards import read_shard, shard_url


class ReleaseReader(Release):
    def __init__(self, root):
        root = storage.absolute(root)
        super().__init__(root, read_manifest(root))

    def path(self, name: str) -> str:
        """A file of the release (e.g. 'teacher/head.safetensors')."""
        return storage.join(self.root, name)

    def shard_path(self, name: str) -> str:
        return shard_url(self.root, name)

    def index_table(self, columns: list[str] | None = None):
        from ..sources.index import read_table

        path = self.path(INDEX)
        try:
            return read_table(path, columns)
        except FileNotFoundError:
            raise UserError(f"{path}: not found (not a release folder?)") from None

    def index(self) -> list[dict]:
        """index.parquet rows, in file order."""
        return self.index_table().to_pylist()

    def index_by_uid(self) -> dict[str, dict]:
        return {r["uid"]: r for r in self.index()}

    def shard_samples(self, name: str, keep: set[str] | None = None) -> list[tuple[str, dict]]:
        """(uid, members) of one shard, in shard order; only the uids in `keep` when given."""
        path = self.shard_path(name)
        with storage.open_read(path) as f:
            return [(key, members) for key, members in read_shard(f, path) if keep is None or key in keep]

    def samples(self, rows: list[dict]) -> dict[str, dict]:
        """{uid: members} for index rows (each with 'uid' and 'shard'), each shard read once."""
        wanted: dict[str, set] = {}
        for row in rows:
            wanted.setdefault(row["shard"], set()).add(row["uid"])
        return {key: members for shard in sorted(wanted) for key, members in self.shard_samples(shard, wanted[shard])}

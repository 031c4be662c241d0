"""Reading releases: manifest.json checked, shard URLs listed from it (never by globbing).

A release is a local folder or an fsspec URL (`pipeline.contract.storage`). Only the manifest and the
shard folders' listings are read here; shards are streamed by `trainer.data`. Several releases can be trained on together when their classes are identical.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.contract import storage
from pipeline.contract.configlib import ConfigError
from pipeline.contract.errors import UserError
from pipeline.contract.layout import MANIFEST, SHARD_SUFFIX
from pipeline.contract.manifest import manifest_task, read_manifest
from pipeline.contract.shards import shard_url


class ReleaseError(ConfigError):
    """A release that cannot be read: the message names the release; `index` its position."""

    def __init__(self, message: str, index: int = 0):
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Shard:
    url: str          # what webdataset opens: a local path or a URL
    name: str         # relative to the release, e.g. 'real/train-000003'
    kind: str
    split: str
    count: int        # samples, from the manifest
    release: str      # the release root


class Release:
    """One release, its manifest checked against this reader's format version."""

    def __init__(self, root: str, manifest: dict):
        """`manifest`: as `contract.manifest.read_manifest` returns it (checked)."""
        self.root = root
        self.manifest = manifest
        where = storage.join(root, MANIFEST)
        classes = manifest["classes"]
        self.classes: list[str] = classes
        self.task: str = manifest_task(manifest)    # classification | segmentation
        self.teacher: dict = manifest.get("teacher") or {}
        self.image_format: str = (manifest.get("image") or {}).get("format", "jpg")
        self._shards = [self._shard(entry) for entry in manifest.get("shards") or ()]
        self.generator_kind: str | None = (manifest.get("generator") or {}).get("kind")
        if self.shards("mix", "train") and self.generator_kind is None:
            raise ReleaseError(f"{where}: has mix shards but no generator.kind")

    def _shard(self, entry: dict) -> Shard:
        name = entry["name"]  # entries were checked by contract.manifest.check_manifest
        return Shard(shard_url(self.root, name), name, entry["kind"], entry["split"],
                     int(entry["count"]), self.root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shards(self, kind: str, split: str) -> list[Shard]:
        return [s for s in self._shards if s.kind == kind and s.split == split]

    def check_shards(self) -> None:
        """Every listed shard exists: one listing per shard folder, local or on object storage."""
        listed: dict[str, dict] = {}
        for shard in self._shards:
            folder, _, base = shard.name.rpartition("/")
            if folder not in listed:
                listed[folder] = storage.listing(storage.join(self.root, folder))
            if base + SHARD_SUFFIX not in listed[folder]:
                raise ReleaseError(f"{self.root}: shard {shard.name}{SHARD_SUFFIX} listed in "
                                   f"{MANIFEST} is missing")


def open_release(root: str) -> Release:
    try:
        manifest = read_manifest(root)
    except UserError as e:
        raise ReleaseError(str(e)) from None
    release = Release(root, manifest)
    release.check_shards()
    return release


class ReleaseSet:
    """Releases trained on together: identical classes, shards pooled per (kind, split)."""

    def __init__(self, releases: list[Release]):
        self.releases = releases
        first = releases[0]
        for i, other in enumerate(releases[1:], 1):
            if other.classes != first.classes:
                diff = next((j for j, (a, b) in enumerate(zip(first.classes, other.classes)) if a != b),
                            min(len(first.classes), len(other.classes)))
                raise ReleaseError(f"{other.root}: classes differ from {first.root} "
                                   f"({len(other.classes)} vs {len(first.classes)} classes, first difference at "
                                   f"index {diff}); releases trained together need identical classes", i)
        self.classes = first.classes
        for i, other in enumerate(releases[1:], 1):
            if other.task != first.task:
                raise ReleaseError(f"{other.root}: a {other.task} release, {first.root} a {first.task} one; releases "
                                   "trained together are for one task", i)
        self.task = first.task

    def __iter__(self):
        return iter(self.releases)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        return ", ".join(r.root for r in self.releases)

    def generator_kinds(self) -> set[str]:
        return {r.generator_kind for r in self.releases if r.shards("mix", "train")}

    def shards(self, kind: str, split: str, generators: list[str] | None = None) -> list[Shard]:
        """Shards of (kind, split) over all releases; mixes only from the selected generator kinds."""
        out = []
        for r in self.releases:
            if kind == "mix" and generators is not None and r.generator_kind not in generators:
                continue
            out.extend(r.shards(kind, split))
        return out

    def count(self, kind: str, split: str, generators: list[str] | None = None) -> int:
        return sum(s.count for s in self.shards(kind, split, generators))

    def mix_pool(self, generators: list[str] | None = None, fraction: float = 1.0) -> list[Shard]:
        """The mix/train shards a run reads: of each release (one generator's pool) its first shards
        holding at least `fraction` of its mixes, in whole shards. The plan draws every pair
        independently and numbers the shards in draw order, so a pool's first shards are a smaller
        pool of the same law: one generation answers the pool-size question."""
        out = []
        for r in self.releases:
            if generators is not None and r.generator_kind not in generators:
                continue
            shards = sorted(r.shards("mix", "train"), key=lambda s: s.name)
            need, taken = math.ceil(fraction * sum(s.count for s in shards) - 1e-9), 0
            for shard in shards:
                if taken >= need:
                    break
                out.append(shard)
                taken += shard.count
        return out

    def feature_dim(self) -> int | None:
        """The teacher feature size when every release stores features of one size, else None."""
        dims = {r.teacher.get("feature_dim") if r.teacher.get("features") else None for r in self.releases}
        return dims.pop() if len(dims) == 1 else None


def open_releases(roots: list[str]) -> ReleaseSet:
    releases = []
    for i, root in enumerate(roots):
        try:
            releases.append(open_release(root))
        except ReleaseError as e:
            raise ReleaseError(str(e), i) from None
    return ReleaseSet(releases)

"""Reading releases: manifest.json checked, shard URLs listed from it (never by globbing).

A release is a local folder or an fsspec URL. Only the manifest is read here; shards are streamed
by `trainer.data`. Several releases can be trained on together when their classes are identical.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from urllib.parse import urlparse

from pipeline import format as fmt
from pipeline.configlib import ConfigError


class ReleaseError(ConfigError):
    """A release that cannot be read: the message names the release; `index` its position."""

    def __init__(self, message: str, index: int = 0):
        super().__init__(message)
        self.index = index


def is_local(root: str) -> bool:
    return urlparse(root).scheme in ("", "file")


def local_path(root: str) -> str:
    return urlparse(root).path if root.startswith("file://") else root


def join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


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
        self.root = root
        self.manifest = manifest
        where = join(root, fmt.MANIFEST)
        try:
            fmt.check_manifest(manifest, where)
        except ValueError as e:
            raise ReleaseError(str(e)) from None
        classes = manifest["classes"]
        self.classes: list[str] = classes
        self.teacher: dict = manifest.get("teacher") or {}
        self.image_format: str = (manifest.get("image") or {}).get("format", "jpg")
        self._shards = [self._shard(entry) for entry in manifest.get("shards") or ()]
        self.generator_kind: str | None = (manifest.get("generator") or {}).get("kind")
        if self.shards("mix", "train") and self.generator_kind is None:
            raise ReleaseError(f"{where}: has mix shards but no generator.kind")

    def _shard(self, entry: dict) -> Shard:
        name = entry["name"]  # entries were checked by format.check_manifest
        return Shard(join(self.root, name + fmt.SHARD_SUFFIX), name, entry["kind"], entry["split"],
                     int(entry["count"]), self.root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shards(self, kind: str, split: str) -> list[Shard]:
        return [s for s in self._shards if s.kind == kind and s.split == split]

    def check_local_shards(self) -> None:
        """Every listed shard exists (local releases only: a remote check would cost a request each)."""
        if not is_local(self.root):
            return
        for shard in self._shards:
            if not os.path.isfile(local_path(shard.url)):
                raise ReleaseError(f"{self.root}: shard {shard.name}{fmt.SHARD_SUFFIX} listed in "
                                   f"{fmt.MANIFEST} is missing")


def read_manifest(root: str) -> dict:
    where = join(root, fmt.MANIFEST)
    try:
        if is_local(root):
            with open(local_path(where), "rb") as f:
                data = f.read()
        else:
            import fsspec

            with fsspec.open(where, "rb") as f:
                data = f.read()
    except FileNotFoundError:
        raise ReleaseError(f"{root}: not a release (no {fmt.MANIFEST})") from None
    except OSError as e:
        raise ReleaseError(f"{where}: cannot read: {e}") from None
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise ReleaseError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise ReleaseError(f"{where}: expected a JSON object")
    return manifest


def open_release(root: str) -> Release:
    release = Release(root, read_manifest(root))
    release.check_local_shards()
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

"""`tsd subset RELEASE --uids FILE --out DIR`: a smaller, valid release holding the listed samples.

Shards keep their names. A shard whose samples are all kept is copied as is; a shard with some
kept is rewritten with just those, members copied byte for byte (never re-encoded) into a
deterministic tar; a shard with none is left out. The teacher folder is copied, the index filtered,
and a new manifest (counts, shards with their sha256, `subset_of` naming the parent) and card
written; the manifest last, so a folder without one is an unfinished subset.
Mixes are kept without their parents unless the parents are listed too.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..contract import storage
from ..contract.errors import UserError
from ..contract.files import atomic_write, read_json, write_json
from ..contract.ids import is_uid, sha256_bytes
from ..contract.layout import CARD, INDEX, MANIFEST, TEACHER_DIR
from ..contract.manifest import created_now, write_manifest
from ..contract.shards import shard_url, stats_url, tar_bytes
from .reader import ReleaseReader


def read_uid_file(path: str | Path) -> list[str]:
    """One uid per line; blank lines and '#' comments are skipped; order kept, duplicates dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: uid file not found")
    uids = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        if not is_uid(value):
            raise UserError(f"{path}:{number}: not a uid (32 lower-case hex characters): {value!r}")
        uids.append(value)
    if not uids:
        raise UserError(f"{path}: no uids")
    return list(dict.fromkeys(uids))


def write_shard(release: ReleaseReader, out: str, shard: dict, keep: set[str],
                uids_in_shard: list[str]) -> dict | None:
    """Copy, rewrite or drop one shard; returns its new manifest entry (None when dropped)."""
    name, parent = shard["name"], release.root
    kept = [u for u in uids_in_shard if u in keep]
    if not kept:
        return None
    src, dst = shard_url(parent, name), shard_url(out, name)
    stats_src, stats_dst = stats_url(parent, name), stats_url(out, name)
    if len(kept) == len(uids_in_shard):
        storage.copy(src, dst)
        if storage.isfile(stats_src):
            storage.copy(stats_src, stats_dst)
        return dict(shard)
    samples = release.shard_samples(name, set(kept))
    if len(samples) != len(kept):
        raise UserError(f"{src}: holds {len(samples)} of the {len(kept)} listed samples the index puts there "
                          "(run `tsd verify` on the parent)")
    data = tar_bytes(samples)
    atomic_write(dst, data)
    entry = dict(shard, count=len(samples), bytes=len(data), sha256=sha256_bytes(data))
    stats = read_json(stats_src)
    if stats is not None:  # the worker's stats, narrowed to the kept samples
        stats.update(count=entry["count"], bytes=entry["bytes"], sha256=entry["sha256"], failures=[],
                     samples=[s for s in stats.get("samples", []) if s["uid"] in keep])
        write_json(stats_dst, stats)
    return entry


def _inside(child: str, parent: str) -> bool:
    return child.rstrip("/") == parent.rstrip("/") or child.startswith(parent.rstrip("/") + "/")


def make_subset(release, uids: list[str], out, name: str | None = None) -> dict:
    """Write the subset of `release` holding `uids` into `out` (new or empty; folders or URLs); returns
    its manifest, written last."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ..stages.card import dataset_card

    reader = ReleaseReader(release)
    parent, out, manifest = reader.root, storage.location(out), reader.manifest
    if storage.is_local(parent):
        parent = os.path.realpath(parent)
    if storage.is_local(out):
        out = os.path.realpath(out)
    if _inside(out, parent):
        raise UserError(f"{out}: must not lie inside the parent release {parent}")
    if not storage.is_empty_or_missing(out):
        raise UserError(f"{out}: exists and is not an empty folder")
    index = reader.index_table()
    known = set(index.column("uid").to_pylist())
    unknown = [u for u in uids if u not in known]
    if unknown:
        more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise UserError(f"{len(unknown)} uid(s) not in {reader.path(INDEX)}: {', '.join(unknown[:3])}{more}")

    keep = set(uids)
    by_shard: dict[str, list[str]] = {}
    for uid, shard in zip(index.column("uid").to_pylist(), index.column("shard").to_pylist()):
        by_shard.setdefault(shard, []).append(uid)
    storage.make_folder(out)
    shards = [entry for s in manifest["shards"]
              if (entry := write_shard(reader, out, s, keep, by_shard.get(s["name"], []))) is not None]
    for rel in storage.walk_files(reader.path(TEACHER_DIR)):
        storage.copy(storage.join(reader.path(TEACHER_DIR), rel), storage.join(out, TEACHER_DIR, rel))
    sub_index = index.filter(pc.is_in(index.column("uid"), value_set=pa.array(sorted(keep))))
    sink = pa.BufferOutputStream()
    pq.write_table(sub_index, sink, compression="zstd")
    atomic_write(storage.join(out, INDEX), sink.getvalue().to_pybytes())

    counts = {key: 0 for key in manifest["counts"]}
    for s in shards:
        counts[f"{s['kind']}/{s['split']}"] += s["count"]
    new = dict(manifest, name=name or f"{manifest['name']}-subset", created=created_now(),
               counts=counts, shards=shards, failures=[],
               subset_of={"name": manifest["name"], "manifest_sha256": storage.sha256(reader.path(MANIFEST)),
                          "samples": sum(counts.values()), "of": sum(manifest["counts"].values())})
    card = dataset_card(new) + (
        f"\n## Subset\n\nA subset of `{manifest['name']}` (manifest sha256 `{new['subset_of']['manifest_sha256']}`): "
        f"{new['subset_of']['samples']} of its {new['subset_of']['of']} samples, made by `tsd subset`; "
        "shards keep their names and their samples' bytes.\n")
    atomic_write(storage.join(out, CARD), card.encode())
    return write_manifest(out, new)


def add_arguments(p) -> None:
    p.add_argument("release", help="release folder or URL")
    p.add_argument("--uids", required=True, help="text file, one uid per line ('#' starts a comment)")
    p.add_argument("--out", required=True, help="new (or empty) folder or URL for the subset")
    p.add_argument("--name", default=None, help="the subset's release name (default: the parent's + '-subset')")


def run(args) -> int:
    manifest = make_subset(args.release, read_uid_file(args.uids), args.out, args.name)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"subset: {args.out}: {counts}; {len(manifest['shards'])} shards "
          f"(of {manifest['subset_of']['name']}); check it with `tsd verify {args.out}`")
    return 0

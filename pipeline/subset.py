"""`tsd subset RELEASE --uids FILE --out DIR`: a smaller, valid release holding the listed samples.

Shards keep their names. A shard whose samples are all kept is copied as is; a shard with some
kept is rewritten with just those, members copied byte for byte (never re-encoded) into a
deterministic tar; a shard with none is left out. The teacher folder is copied, the index filtered,
and a new manifest (counts, shards with their sha256, `subset_of` naming the parent) and card
written; the manifest last, so a folder without one is an unfinished subset.
Mixes are kept without their parents unless the parents are listed too.
"""
from __future__ import annotations

import datetime
import json
import shutil
import sys
from pathlib import Path

from . import format as fmt
from .shards import atomic_write, tar_bytes


class SubsetError(ValueError):
    """A subset that cannot be made as asked: the message names the file or uid."""


def read_uid_file(path: str | Path) -> list[str]:
    """One uid per line; blank lines and '#' comments are skipped; order kept, duplicates dropped."""
    path = Path(path)
    if not path.is_file():
        raise SubsetError(f"{path}: uid file not found")
    uids = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        value = line.split("#", 1)[0].strip()
        if not value:
            continue
        if not fmt.is_uid(value):
            raise SubsetError(f"{path}:{number}: not a uid (32 lower-case hex characters): {value!r}")
        uids.append(value)
    if not uids:
        raise SubsetError(f"{path}: no uids")
    return list(dict.fromkeys(uids))


def shard_members(path: Path, keep: set[str]) -> list[tuple[str, dict]]:
    """The kept samples of one shard, in shard order, members as stored."""
    with open(path, "rb") as f:
        return [(key, members) for key, members in fmt.read_shard(f, str(path)) if key in keep]


def write_shard(parent: Path, out: Path, shard: dict, keep: set[str], uids_in_shard: list[str]) -> dict | None:
    """Copy, rewrite or drop one shard; returns its new manifest entry (None when dropped)."""
    name = shard["name"]
    kept = [u for u in uids_in_shard if u in keep]
    if not kept:
        return None
    src, dst = parent / f"{name}{fmt.SHARD_SUFFIX}", out / f"{name}{fmt.SHARD_SUFFIX}"
    stats_src, stats_dst = parent / f"{name}{fmt.STATS_SUFFIX}", out / f"{name}{fmt.STATS_SUFFIX}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if len(kept) == len(uids_in_shard):
        shutil.copyfile(src, dst)
        if stats_src.is_file():
            shutil.copyfile(stats_src, stats_dst)
        return dict(shard)
    samples = shard_members(src, set(kept))
    if len(samples) != len(kept):
        raise SubsetError(f"{src}: holds {len(samples)} of the {len(kept)} listed samples the index puts there "
                          "(run `tsd verify` on the parent)")
    data = tar_bytes(samples)
    atomic_write(dst, data)
    entry = dict(shard, count=len(samples), bytes=len(data), sha256=fmt.sha256_bytes(data))
    if stats_src.is_file():  # the worker's stats, narrowed to the kept samples
        stats = json.loads(stats_src.read_text())
        stats.update(count=entry["count"], bytes=entry["bytes"], sha256=entry["sha256"], failures=[],
                     samples=[s for s in stats.get("samples", []) if s["uid"] in keep])
        atomic_write(stats_dst, json.dumps(stats, indent=1, sort_keys=True).encode())
    return entry


def make_subset(release: str | Path, uids: list[str], out: str | Path, name: str | None = None) -> dict:
    """Write the subset of `release` holding `uids` into `out` (new or empty); returns its manifest."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .card import dataset_card
    from .verify import load_manifest

    parent, out = Path(release).resolve(), Path(out).resolve()
    manifest = load_manifest(parent)
    if out == parent or parent in out.parents:
        raise SubsetError(f"{out}: must not lie inside the parent release {parent}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SubsetError(f"{out}: exists and is not an empty folder")
    index = pq.read_table(parent / fmt.INDEX)
    known = set(index.column("uid").to_pylist())
    unknown = [u for u in uids if u not in known]
    if unknown:
        more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise SubsetError(f"{len(unknown)} uid(s) not in {parent / fmt.INDEX}: {', '.join(unknown[:3])}{more}")

    keep = set(uids)
    by_shard: dict[str, list[str]] = {}
    for uid, shard in zip(index.column("uid").to_pylist(), index.column("shard").to_pylist()):
        by_shard.setdefault(shard, []).append(uid)
    out.mkdir(parents=True, exist_ok=True)
    shards = [entry for s in manifest["shards"]
              if (entry := write_shard(parent, out, s, keep, by_shard.get(s["name"], []))) is not None]
    shutil.copytree(parent / fmt.TEACHER_DIR, out / fmt.TEACHER_DIR)
    sub_index = index.filter(pc.is_in(index.column("uid"), value_set=pa.array(sorted(keep))))
    sink = pa.BufferOutputStream()
    pq.write_table(sub_index, sink, compression="zstd")
    atomic_write(out / fmt.INDEX, sink.getvalue().to_pybytes())

    counts = {key: 0 for key in manifest["counts"]}
    for s in shards:
        counts[f"{s['kind']}/{s['split']}"] += s["count"]
    new = dict(manifest, name=name or f"{manifest['name']}-subset", created=datetime.date.today().isoformat(),
               counts=counts, shards=shards, failures=[],
               subset_of={"name": manifest["name"], "manifest_sha256": fmt.sha256_file(parent / fmt.MANIFEST),
                          "samples": sum(counts.values()), "of": sum(manifest["counts"].values())})
    card = dataset_card(new) + (
        f"\n## Subset\n\nA subset of `{manifest['name']}` (manifest sha256 `{new['subset_of']['manifest_sha256']}`): "
        f"{new['subset_of']['samples']} of its {new['subset_of']['of']} samples, made by `tsd subset`; "
        "shards keep their names and their samples' bytes.\n")
    atomic_write(out / fmt.CARD, card.encode())
    atomic_write(out / fmt.MANIFEST, (json.dumps(new, indent=1) + "\n").encode())
    return new


def main(args) -> int:
    """`tsd subset RELEASE --uids FILE --out DIR [--name NAME]`."""
    try:
        manifest = make_subset(args.release, read_uid_file(args.uids), args.out, args.name)
    except SubsetError as e:
        print(f"tsd subset: error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"subset: {args.out}: {counts}; {len(manifest['shards'])} shards "
          f"(of {manifest['subset_of']['name']}); check it with `tsd verify {args.out}`")
    return 0

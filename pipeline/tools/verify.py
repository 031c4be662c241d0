"""Verify a release against its manifest: every shard's sha256, size, sample count and schema,
and the index against both. Names every bad shard; reading never executes anything from it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..contract.ids import sha256_file
from ..contract.layout import INDEX, SHARD_FOLDERS, SHARD_SUFFIX
from ..contract.manifest import read_manifest
from ..contract.samples import M_FEATURES, M_JSON, SampleMeta, dense_logits, npy_load
from ..contract.shards import read_shard


def check_sample(key: str, members: dict, manifest: dict, split: str, where: str) -> str | None:
    """The schema of one sample; returns what is wrong, or None."""
    image_ext = manifest["image"]["format"]
    if image_ext not in members:
        return f"sample {key}: no {image_ext} image"
    if M_JSON not in members:
        return f"sample {key}: no json"
    try:
        meta = SampleMeta.from_json(members[M_JSON], where)
        k = manifest["views"]["k"] if split == "train" else 1
        if meta.uid != key:
            return f"sample {key}: json uid {meta.uid!r} differs from the key"
        if len(meta.views) != k:
            return f"sample {key}: {len(meta.views)} views, expected {k}"
        logits = dense_logits(members, meta, manifest["num_classes"], f"{where}: sample {key}")
        if logits.shape[0] != k:
            return f"sample {key}: logits for {logits.shape[0]} views, expected {k}"
        if not np.isfinite(logits).all():
            return f"sample {key}: non-finite teacher logits"
        if manifest["teacher"].get("features"):
            if M_FEATURES not in members:
                return f"sample {key}: no features"
            feats = npy_load(members[M_FEATURES], where)
            if feats.shape != (k, manifest["teacher"]["feature_dim"]):
                return f"sample {key}: features shape {feats.shape}"
    except ValueError as e:
        return str(e).split(": ", 1)[-1]
    return None


def check_shard(root: Path, shard: dict, manifest: dict, quick: bool) -> tuple[list[str], list[str]]:
    """(problems, uids) of one shard."""
    path = root / f"{shard['name']}{SHARD_SUFFIX}"
    if not path.is_file():
        return ["missing"], []
    size = path.stat().st_size
    if size != shard["bytes"]:
        return [f"size {size} bytes, manifest says {shard['bytes']}"], []
    if quick:
        return [], []
    problems = []
    digest = sha256_file(path)
    if digest != shard["sha256"]:
        problems.append(f"sha256 {digest[:12]}…, manifest says {shard['sha256'][:12]}…")
    uids = []
    try:
        with open(path, "rb") as f:
            for key, members in read_shard(f, str(path)):
                uids.append(key)
                bad = check_sample(key, members, manifest, shard["split"], str(path))
                if bad:
                    problems.append(bad)
                    break  # one bad sample is enough to condemn the shard; keep the report short
    except ValueError as e:
        problems.append(str(e).split(": ", 1)[-1])
    if not problems and len(uids) != shard["count"]:
        problems.append(f"{len(uids)} samples, manifest says {shard['count']}")
    return problems, uids


def verify_release(root: str | Path, quick: bool = False, progress: bool = False) -> list[tuple[str, str]]:
    """[(what, problem)] — empty when the release is intact."""
    from tqdm import tqdm

    root = Path(root)
    manifest = read_manifest(root)
    problems: list[tuple[str, str]] = []
    listed = {s["name"] for s in manifest["shards"]}
    shard_uids: dict[str, list[str]] = {}
    for shard in tqdm(manifest["shards"], desc="verify", unit="shard", disable=not progress):
        found, uids = check_shard(root, shard, manifest, quick)
        problems += [(shard["name"], p) for p in found]
        shard_uids[shard["name"]] = uids
    for prefix in SHARD_FOLDERS:
        for tar in sorted((root / prefix).glob(f"*{SHARD_SUFFIX}")):
            name = f"{prefix}/{tar.name[:-len(SHARD_SUFFIX)]}"
            if name not in listed:
                problems.append((name, "shard not listed in the manifest"))
    problems += check_index(root, manifest, shard_uids, quick)
    return problems


def check_index(root: Path, manifest: dict, shard_uids: dict, quick: bool) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    path = root / INDEX
    if not path.is_file():
        return [(INDEX, "missing")]
    try:
        table = pq.read_table(path, columns=["uid", "shard"])
    except Exception as e:  # pyarrow raises several types for a damaged file
        return [(INDEX, f"unreadable: {e}")]
    per_shard: dict[str, list[str]] = {}
    for uid, shard in zip(table.column("uid").to_pylist(), table.column("shard").to_pylist()):
        per_shard.setdefault(shard, []).append(uid)
    problems = []
    for shard in manifest["shards"]:
        name, rows = shard["name"], per_shard.pop(shard["name"], [])
        if len(rows) != shard["count"]:
            problems.append((name, f"index has {len(rows)} rows, manifest says {shard['count']}"))
        elif not quick and shard_uids.get(name) and sorted(rows) != sorted(shard_uids[name]):
            problems.append((name, "uids in the shard differ from the index"))
    for name in per_shard:
        problems.append((name, "index rows for a shard not in the manifest"))
    return problems


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("release", help="release folder")
    p.add_argument("--quick", action="store_true", help="sizes and counts only (no hashing, no decoding)")


def run(args) -> int:
    """0 when the release is intact; 1 after naming each bad shard."""
    problems = verify_release(args.release, quick=args.quick, progress=sys.stderr.isatty())
    for what, why in problems:
        print(f"BAD {what}: {why}")
    if problems:
        print(f"verify: {args.release}: {len({w for w, _ in problems})} bad item(s)")
        return 1
    print(f"verify: {args.release}: OK")
    return 0

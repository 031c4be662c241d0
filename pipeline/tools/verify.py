"""Verify a release against its manifest: every shard's sha256, size, sample count and schema,
and the index against both. Names every bad shard; reading never executes anything from it."""
from __future__ import annotations

import hashlib

import numpy as np

from ..contract import storage
from ..contract.errors import UserError
from ..contract.layout import INDEX, MANIFEST, SHARD_FOLDERS, SHARD_SUFFIX
from ..contract.manifest import read_manifest
from ..contract.progress import Progress
from ..contract.manifest import manifest_task
from ..contract.samples import (M_DENSE_LOGITS, M_FEATURES, M_JSON, M_MASK, SampleMeta, dense_logits, npy_load,
                                segmentation_sample)
from ..contract.tasks import IGNORE_INDEX, SEGMENTATION
from ..contract.shards import IDENTITY_FIELDS, finished_shards, manifest_shard_identity, read_shard, shard_url, \
    stale_reason


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
        if manifest_task(manifest) == SEGMENTATION:
            logits = check_segmentation(key, members, meta, manifest, k, f"{where}: sample {key}")
            if isinstance(logits, str):
                return logits
        else:
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


def check_segmentation(key: str, members: dict, meta: SampleMeta, manifest: dict, k: int, where: str):
    """A segmentation sample's mask (real samples: present, at the stored image's size, values class
    ids or the ignore value; mixes: absent) and dense logits [K, C, h, w] at the manifest's grid.
    Returns the decoded logits, or what is wrong (a str)."""
    classes, ignore = manifest["num_classes"], manifest.get("ignore_index", IGNORE_INDEX)
    mask, logits = segmentation_sample(members, classes, where)
    if meta.kind == "real":
        if mask is None:
            return f"sample {key}: no {M_MASK}"
        mask = mask.numpy()
        if mask.shape != (meta.height, meta.width):
            return f"sample {key}: mask {mask.shape[1]}x{mask.shape[0]}, image {meta.width}x{meta.height}"
        bad = np.unique(mask[(mask >= classes) & (mask != ignore)])
        if bad.size:
            return f"sample {key}: mask value {int(bad[0])} is not a class (0..{classes - 1}) nor {ignore}"
    elif mask is not None:
        return f"sample {key}: a {meta.kind} sample with a mask"
    grid = tuple(manifest["dense"]["grid"])
    if logits.shape[2:] != grid:
        return f"sample {key}: dense logits grid {logits.shape[2]}x{logits.shape[3]}, manifest says {grid[0]}x{grid[1]}"
    expected = manifest["dense"]["logits"]
    if (expected == "full") != (M_DENSE_LOGITS in members):
        return f"sample {key}: dense logits not stored as the manifest's {expected!r}"
    return logits


class _Hashing:
    """A read-only file wrapper that hashes what passes through: a shard is read once, for its
    sha256 and its samples together (one GET on object storage)."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data

    def hexdigest(self) -> str:
        while self.read(8 << 20):  # what the tar reader left unread (end-of-archive padding)
            pass
        return self.h.hexdigest()


def check_shard(root, shard: dict, manifest: dict, quick: bool, size: int | None) -> tuple[list[str], list[str]]:
    """(problems, uids) of one shard; `size` is its listed size (None: not there)."""
    path = shard_url(root, shard["name"])
    if size is None:
        return ["missing"], []
    if size != shard["bytes"]:
        return [f"size {size} bytes, manifest says {shard['bytes']}"], []
    if quick:
        return [], []
    problems, uids = [], []
    with storage.open_read(path) as f:
        reader = _Hashing(f)
        try:
            for key, members in read_shard(reader, path):
                uids.append(key)
                bad = check_sample(key, members, manifest, shard["split"], path)
                if bad:
                    problems.append(bad)
                    break  # one bad sample is enough to condemn the shard; keep the report short
        except ValueError as e:
            problems.append(str(e).split(": ", 1)[-1])
        digest = reader.hexdigest()
    if digest != shard["sha256"]:
        problems.insert(0, f"sha256 {digest[:12]}…, manifest says {shard['sha256'][:12]}…")
    if not problems and len(uids) != shard["count"]:
        problems.append(f"{len(uids)} samples, manifest says {shard['count']}")
    return problems, uids


# what verify reads from manifest.json beyond what every reader checks (contract.manifest)
VERIFY_FIELDS = {"image.format": str, "views.k": int, "teacher": dict, "num_classes": int}
SHARD_FIELDS = {"bytes": int, "sha256": str}


SEGMENTATION_FIELDS = {"dense.grid": list, "dense.logits": str, "ignore_index": int}


def check_verify_fields(manifest: dict, where: str) -> None:
    """UserError naming the first field verify needs that is missing or of the wrong type."""
    needed = {**VERIFY_FIELDS, **(SEGMENTATION_FIELDS if manifest_task(manifest) == SEGMENTATION else {})}
    for dotted, kind in needed.items():
        value = manifest
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, kind):
            raise UserError(f"{where}: {dotted} is missing or not a {kind.__name__}")
    for entry in manifest.get("shards") or ():
        for name, kind in SHARD_FIELDS.items():
            if not isinstance(entry.get(name), kind):
                raise UserError(f"{where}: shard {entry['name']!r} lacks {name}")


def verify_release(root, quick: bool = False, progress: bool = False) -> list[tuple[str, str]]:
    """[(what, problem)] — empty when the release (a folder or a URL) is intact."""
    root = storage.absolute(root)
    manifest = read_manifest(root)
    check_verify_fields(manifest, storage.join(root, MANIFEST))
    problems: list[tuple[str, str]] = []
    listed = {s["name"] for s in manifest["shards"]}
    files = {prefix: storage.listing(storage.join(root, prefix)) for prefix in SHARD_FOLDERS}
    shard_uids: dict[str, list[str]] = {}
    with Progress("verify", len(manifest["shards"]), unit="shards", enabled=progress) as bar:
        for shard in manifest["shards"]:
            folder, _, base = shard["name"].partition("/")
            found, uids = check_shard(root, shard, manifest, quick, files.get(folder, {}).get(base + SHARD_SUFFIX))
            problems += [(shard["name"], p) for p in found]
            shard_uids[shard["name"]] = uids
            bar.update(1, images=shard["count"])
    for prefix in SHARD_FOLDERS:
        for tar in sorted(n for n in files[prefix] if n.endswith(SHARD_SUFFIX) and not n.startswith(".")):
            name = f"{prefix}/{tar[:-len(SHARD_SUFFIX)]}"
            if name not in listed:
                problems.append((name, "shard not listed in the manifest"))
    problems += check_index(root, manifest, shard_uids, quick)
    problems += stale_shards(root, manifest)
    return problems


STALE = "stale: "   # how a stale shard's problem starts (printed as `STALE <shard>: …`)


def stale_shards(root, manifest: dict) -> list[tuple[str, str]]:
    """[(shard, 'stale: <what differs>')] of the shards whose stats record another identity than the
    manifest's (`contract.shards.manifest_shard_identity`): made by another teacher head, weights,
    generator or plan. Quick mode too: the stats are small. A shard whose stats record no identity
    (made before shards recorded one, or a release without stats) cannot be told: not reported."""
    names = [s["name"] for s in manifest["shards"]]
    stats = finished_shards(root, names, keep=lambda s: {k: s[k] for k in IDENTITY_FIELDS if k in s})
    found = []
    for name in names:
        recorded = stats.get(name, {})
        if len(recorded) == len(IDENTITY_FIELDS) and (why := stale_reason(recorded, manifest_shard_identity(manifest, name))):
            found.append((name, STALE + why))
    return found


def missing_shards(root) -> list[tuple[str, str]]:
    """[(shard, what)] of the planned shards a release was made without (`tsd release --allow-missing`):
    recorded in its manifest, so missing rather than damaged."""
    missing = read_manifest(storage.absolute(root)).get("missing") or {}
    return [(s["name"], f"{s['planned']} planned samples not generated (released with --allow-missing)")
            for s in missing.get("shards", ())]


def check_index(root, manifest: dict, shard_uids: dict, quick: bool) -> list[tuple[str, str]]:
    from ..sources.index import read_table

    path = storage.join(root, INDEX)
    if not storage.isfile(path):
        return [(INDEX, "missing")]
    try:
        table = read_table(path, columns=["uid", "shard"])
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
    p.add_argument("release", help="release folder or URL (s3://bucket/releases/x)")
    p.add_argument("--quick", action="store_true", help="sizes and counts only (no hashing, no decoding)")


def run(args) -> int:
    """0 when the release is intact; 1 after naming each bad shard."""
    problems = verify_release(args.release, quick=args.quick, progress=True)
    for what, why in missing_shards(args.release):
        print(f"MISSING {what}: {why}")
    for what, why in problems:
        print(f"STALE {what}: {why[len(STALE):]}" if why.startswith(STALE) else f"BAD {what}: {why}")
    if problems:
        print(f"verify: {args.release}: {len({w for w, _ in problems})} bad item(s)")
        return 1
    print(f"verify: {args.release}: OK")
    return 0

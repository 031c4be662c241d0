"""A release's layout: its files, and the names of its shards."""
from __future__ import annotations

MANIFEST = "manifest.json"
INDEX = "index.parquet"
CARD = "README.md"
TEACHER_DIR = "teacher"
HEAD_FILE = "teacher/head.safetensors"
PROBE_METRICS = "teacher/probe.json"

KINDS = ("real", "mix")
SPLITS = ("train", "val")
# (kind, split) -> shard name prefix inside the release; mixes exist for train only.
SHARD_PREFIX = {("real", "train"): "real/train", ("real", "val"): "real/val", ("mix", "train"): "mix/mix"}
SHARD_FOLDERS = tuple(sorted({p.split("/")[0] for p in SHARD_PREFIX.values()}))
SHARD_SUFFIX = ".tar"
STATS_SUFFIX = ".stats.json"  # written after the tar is published: its presence marks the shard done


# index.parquet: one row per released sample, these columns in this order (name, Arrow type):
# label -1 for a mix; parents and weight (of parents[0]) for a mix; the teacher's top-1 and entropy
# on the sample's first view. docs/FORMAT.md describes them.
INDEX_COLUMNS = (("uid", "string"), ("split", "string"), ("kind", "string"), ("shard", "string"),
                 ("label", "int32"), ("class_name", "string"), ("parents", "list<string>"),
                 ("weight", "float64"), ("seed", "int64"), ("n_views", "int32"),
                 ("teacher_top1", "int32"), ("teacher_entropy", "float64"))


def shard_name(kind: str, split: str, number: int) -> str:
    """Shard path relative to the release root, without suffix: e.g. 'real/train-000003'."""
    return f"{SHARD_PREFIX[(kind, split)]}-{number:06d}"


def shard_kind_split(name: str) -> tuple[str, str]:
    """Inverse of `shard_name` for the (kind, split) part."""
    prefix = name.rsplit("-", 1)[0]
    for key, value in SHARD_PREFIX.items():
        if value == prefix:
            return key
    raise ValueError(f"not a shard name of this format: {name!r}")

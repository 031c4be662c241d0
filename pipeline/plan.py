"""Plan: every sample the generation stage will write, decided up front and deterministically.

One row per output sample: real train and val images, and the SD-Mixup pool (pairs of train images,
a mixing weight, a seed, the recorded views), grouped into shards. The same index, config and seed
give a byte-identical plan.parquet, so a rerun, a retry or another worker makes the same samples.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import format as fmt
from .config import JobConfig
from .configlib import ConfigError, to_dict
from .source_index import SourceIndex, read_source_index


def plan_schema():
    import pyarrow as pa

    return pa.schema([
        ("uid", pa.string()), ("split", pa.string()), ("kind", pa.string()), ("shard", pa.string()),
        ("label", pa.int32()), ("class_name", pa.string()), ("path", pa.string()),
        ("parents", pa.list_(pa.string())), ("parent_paths", pa.list_(pa.string())),
        ("weight", pa.float64()), ("seed", pa.int64()),
        ("width", pa.int32()), ("height", pa.int32()),      # stored size
        ("views", pa.list_(pa.list_(pa.float64()))),
    ])


def plan_fingerprint(job: JobConfig) -> str:
    """What the plan depends on: a changed value means the plan (and its shards) must be redone."""
    relevant = {"seed": job.seed, "data": to_dict(job.data, paths=False), "views": to_dict(job.views),
                "plan": to_dict(job.plan), "shard_size": job.generate.shard_size,
                "gen_size": job.generator.size if job.generator else None,
                "index_sha256": fmt.sha256_file(job.data.index)}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def geometry(job: JobConfig, kind: str, split: str, seed: int, source: dict | None = None) -> tuple[int, int, list]:
    """(stored width, stored height, recorded views) of a planned sample: a real image from its
    source row's size, a mix from the generator's square output."""
    if kind == "real":
        w, h = fmt.stored_size(source["width"], source["height"], job.data.store_size)
    else:
        w, h = fmt.stored_size(job.generator.size, job.generator.size, job.data.store_size)
    spec = job.views.spec()
    views = fmt.sample_views(seed, w, h, job.views.k, spec) if split == "train" else fmt.center_view(w, h, spec)
    return w, h, views


def _real_rows(job: JobConfig, rows: list[dict], split: str, classes: list[str]) -> list[dict]:
    out = []
    for r in rows:
        seed = fmt.derive_seed(job.seed, r["uid"])
        w, h, views = geometry(job, "real", split, seed, r)
        out.append(dict(uid=r["uid"], split=split, kind="real", label=r["label"], class_name=classes[r["label"]],
                        path=r["path"], parents=[], parent_paths=[], weight=None, seed=seed,
                        width=w, height=h, views=views))
    return out


def draw_pairs(job: JobConfig, train: list[dict], count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Parent index pairs by the configured pairing mode (class-agnostic 'any' by default)."""
    labels = np.array([r["label"] for r in train])
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    mode, n = job.plan.pairing, len(train)
    if n < 2:
        raise ConfigError(f"plan: mixing needs at least 2 training images, the index has {n}")
    if mode == "cross-class" and len(by_class) < 2:
        raise ConfigError("plan.pairing: 'cross-class' needs at least 2 classes")
    if mode == "same-class" and not any(len(v) >= 2 for v in by_class.values()):
        raise ConfigError("plan.pairing: 'same-class' needs a class with at least 2 images")
    pairs = []
    while len(pairs) < count:
        a = int(rng.integers(n))
        if mode == "same-class":
            pool = by_class[labels[a]]
            if len(pool) < 2:
                continue
            b = int(pool[rng.integers(len(pool))])
        else:
            b = int(rng.integers(n))
        if b == a or (mode == "cross-class" and labels[a] == labels[b]):
            continue
        pairs.append((a, b))
    return pairs


def draw_weight(job: JobConfig, rng: np.random.Generator) -> float:
    p = job.plan
    if p.weight_law == "fixed":
        return p.weight
    if p.weight_law == "beta":
        return round(float(rng.beta(p.beta_a, p.beta_a)), 6)
    lo, hi = p.weight_range
    return round(float(rng.uniform(lo, hi)), 6)


def _mix_rows(job: JobConfig, train: list[dict]) -> list[dict]:
    count = job.plan.resolve_pool(len(train))
    if count == 0:
        return []
    rng = np.random.Generator(np.random.PCG64(job.seed))
    out = []
    for i, (a, b) in enumerate(draw_pairs(job, train, count, rng)):
        weight = draw_weight(job, rng)
        ua, ub = train[a]["uid"], train[b]["uid"]
        uid = fmt.make_uid("mix", job.seed, ua, ub, i)
        seed = fmt.derive_seed(job.seed, uid)
        w, h, views = geometry(job, "mix", "train", seed)
        out.append(dict(uid=uid, split="train", kind="mix", label=-1, class_name=None, path=None,
                        parents=[ua, ub], parent_paths=[train[a]["path"], train[b]["path"]],
                        weight=weight, seed=seed, width=w, height=h, views=views))
    return out


def _assign_shards(rows: list[dict], kind: str, split: str, shard_size: int) -> None:
    for i, row in enumerate(rows):
        row["shard"] = fmt.shard_name(kind, split, i // shard_size)


@dataclass
class Plan:
    rows: list[dict]
    classes: list[str]
    fingerprint: str

    def shards(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for r in self.rows:
            out.setdefault(r["shard"], []).append(r)
        return out

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            key = f"{r['kind']}/{r['split']}"
            out[key] = out.get(key, 0) + 1
        return out


def make_plan(job: JobConfig, index: SourceIndex | None = None) -> Plan:
    index = index or read_source_index(job.data)
    train = index.split("train")  # sorted by uid: hashes, so shards mix the classes
    rows = []
    for kind, split, part in (("real", "train", _real_rows(job, train, "train", index.classes)),
                              ("real", "val", _real_rows(job, index.split("val"), "val", index.classes)),
                              ("mix", "train", _mix_rows(job, train))):
        _assign_shards(part, kind, split, job.generate.shard_size)
        rows += part
    return Plan(rows, index.classes, plan_fingerprint(job))


def write_plan(plan: Plan, path: str | Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .shards import atomic_write

    schema = plan_schema().with_metadata({b"tsdistill.classes": json.dumps(plan.classes).encode(),
                                          b"tsdistill.fingerprint": plan.fingerprint.encode()})
    table = pa.Table.from_pylist(plan.rows, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write(path, sink.getvalue().to_pybytes())


def read_plan(path: str | Path) -> Plan:
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no plan (run `tsd plan` first)")
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    return Plan(table.to_pylist(), json.loads(meta[b"tsdistill.classes"]),
                meta[b"tsdistill.fingerprint"].decode())

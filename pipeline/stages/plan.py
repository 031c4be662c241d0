"""Plan: every sample the generation stage will write, decided up front and deterministically.

One row per output sample (`PlanRow`): real train and val images, and the SD-Mixup pool (pairs of
train images, a mixing weight, a seed, the recorded views), grouped into shards. The same index,
config and seed give a byte-identical plan.parquet, so a rerun, a retry or another worker makes the
same samples.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import JobConfig, add_job_arguments, load_job_args
from ..contract.configlib import ConfigError, files_optional, to_dict
from ..contract.errors import UserError
from ..contract.files import atomic_write, reuse
from ..contract.ids import derive_seed, fingerprint, make_uid, sha256_file
from ..contract.images import stored_size
from ..contract.layout import shard_name
from ..contract.views import center_view, sample_views
from ..sources.index import CLASSES_KEY, SourceIndex, read_source_index
from .jobdir import marker, plan_path

FINGERPRINT_KEY = b"tsdistill.fingerprint"


@dataclass(frozen=True)
class PlanRow:
    """One planned sample, as plan.parquet stores it (the columns, in this order)."""
    uid: str
    split: str
    kind: str                 # real | mix
    shard: str                # e.g. 'mix/mix-000002'
    label: int                # -1 for mixes
    class_name: str | None
    path: str | None          # the source image (real)
    parents: list = field(default_factory=list)       # parent uids (mix)
    parent_paths: list = field(default_factory=list)  # their source images
    weight: float | None = None                       # mixing weight of parents[0]
    seed: int = 0
    width: int = 0            # stored size
    height: int = 0
    views: list = field(default_factory=list)         # K × [x, y, w, h, flip]


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
    return fingerprint({"seed": job.seed, "data": to_dict(job.data, paths=False), "views": to_dict(job.views),
                        "plan": to_dict(job.plan), "shard_size": job.generate.shard_size,
                        "gen_size": job.generator.size if job.generator else None,
                        "index_sha256": sha256_file(job.data.index)})


def geometry(job: JobConfig, kind: str, split: str, seed: int, source: dict | None = None) -> tuple[int, int, list]:
    """(stored width, stored height, recorded views) of a planned sample: a real image from its
    source row's size, a mix from the generator's square output."""
    if kind == "real":
        w, h = stored_size(source["width"], source["height"], job.data.store_size)
    else:
        w, h = stored_size(job.generator.size, job.generator.size, job.data.store_size)
    views = sample_views(seed, w, h, job.views.k, job.views) if split == "train" else center_view(w, h, job.views)
    return w, h, views


def make_row(job: JobConfig, uid: str, split: str, kind: str, *, label: int, class_name: str | None,
             source: dict | None = None, parents: tuple = (), parent_paths: tuple = (),
             weight: float | None = None, shard: str = "") -> PlanRow:
    """The one constructor of a planned sample (plan and regenerate): the seed from (seed, uid),
    the stored size and views from `geometry`."""
    seed = derive_seed(job.seed, uid)
    width, height, views = geometry(job, kind, split, seed, source)
    return PlanRow(uid=uid, split=split, kind=kind, shard=shard, label=label, class_name=class_name,
                   path=source["path"] if kind == "real" else None, parents=list(parents),
                   parent_paths=list(parent_paths), weight=weight, seed=seed, width=width, height=height,
                   views=views)


def _real_rows(job: JobConfig, rows: list[dict], split: str, classes: list[str]) -> list[PlanRow]:
    return [make_row(job, r["uid"], split, "real", label=r["label"], class_name=classes[r["label"]], source=r)
            for r in rows]


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


def _mix_rows(job: JobConfig, train: list[dict]) -> list[PlanRow]:
    count = job.plan.resolve_pool(len(train))
    if count == 0:
        return []
    rng = np.random.Generator(np.random.PCG64(job.seed))
    out = []
    for i, (a, b) in enumerate(draw_pairs(job, train, count, rng)):
        weight = draw_weight(job, rng)
        ua, ub = train[a]["uid"], train[b]["uid"]
        out.append(make_row(job, make_uid("mix", job.seed, ua, ub, i), "train", "mix", label=-1, class_name=None,
                            parents=(ua, ub), parent_paths=(train[a]["path"], train[b]["path"]), weight=weight))
    return out


def _assign_shards(rows: list[PlanRow], kind: str, split: str, shard_size: int) -> list[PlanRow]:
    return [replace(row, shard=shard_name(kind, split, i // shard_size)) for i, row in enumerate(rows)]


@dataclass
class Plan:
    rows: list[PlanRow]
    classes: list[str]
    fingerprint: str

    def shards(self) -> dict[str, list[PlanRow]]:
        out: dict[str, list[PlanRow]] = {}
        for r in self.rows:
            out.setdefault(r.shard, []).append(r)
        return out

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            key = f"{r.kind}/{r.split}"
            out[key] = out.get(key, 0) + 1
        return out


def make_plan(job: JobConfig, index: SourceIndex | None = None) -> Plan:
    index = index or read_source_index(job.data)
    train = index.split("train")  # sorted by uid: hashes, so shards mix the classes
    rows = []
    for kind, split, part in (("real", "train", _real_rows(job, train, "train", index.classes)),
                              ("real", "val", _real_rows(job, index.split("val"), "val", index.classes)),
                              ("mix", "train", _mix_rows(job, train))):
        rows += _assign_shards(part, kind, split, job.generate.shard_size)
    return Plan(rows, index.classes, plan_fingerprint(job))


def write_plan(plan: Plan, path: str | Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = plan_schema().with_metadata({CLASSES_KEY: json.dumps(plan.classes).encode(),
                                          FINGERPRINT_KEY: plan.fingerprint.encode()})
    table = pa.Table.from_pylist([asdict(r) for r in plan.rows], schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write(path, sink.getvalue().to_pybytes())


def read_plan(path: str | Path) -> Plan:
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise UserError(f"{path}: no plan (run `tsd plan` first)")
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    return Plan([PlanRow(**r) for r in table.to_pylist()], json.loads(meta[CLASSES_KEY]),
                meta[FINGERPRINT_KEY].decode())


def plan_stage(job: JobConfig, out: str | Path, force: bool = False) -> tuple[Plan, bool]:
    """(plan, reused) — plan.parquet is rewritten only when its fingerprint changed."""
    def write():
        plan = make_plan(job)
        write_plan(plan, plan_path(out))
        return plan.counts()

    _, reused = reuse(marker(out, "plan"), plan_fingerprint(job), write, outputs=[plan_path(out)], force=force)
    return read_plan(plan_path(out)), reused


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    add_job_arguments(p, out_required=False)
    p.add_argument("--dry-run", action="store_true", help="print the estimate only (samples, shards, disk, GPU-hours)")


def run(args) -> int:
    """`tsd plan JOB --out DIR` writes the plan; `--dry-run` estimates the job and writes nothing."""
    if args.dry_run:
        from ..tools.estimate import print_estimate

        with files_optional():  # a recipe can be estimated before its data and weights are downloaded
            job = load_job_args(args)
        print_estimate(job)
        return 0
    job = load_job_args(args)
    if not args.out:
        raise UserError("--out is required (or use --dry-run)")
    plan, reused = plan_stage(job, args.out)
    counts = ", ".join(f"{k} {v}" for k, v in plan.counts().items())
    print(f"plan: {counts}; {len(plan.shards())} shards{' [reused]' if reused else ''}")
    return 0

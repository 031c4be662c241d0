"""Plan: every sample the generation stage will write, decided up front and deterministically.

One row per output sample (`PlanRow`): real train and val images, and the SD-Mixup pool (pairs of
train images, a mixing weight, a seed, the recorded views), grouped into shards. The same index,
config and seed give a byte-identical plan.parquet, so a rerun, a retry or another worker makes the
same samples.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

import numpy as np

from ..config import JobConfig, add_job_arguments, load_job_args
from ..contract import storage
from ..contract.configlib import ConfigError, files_optional, to_dict
from ..contract.errors import UserError, first_line
from ..contract.files import reuse
from ..contract.ids import derive_seed, fingerprint, make_uid
from ..contract.images import stored_size
from ..contract.layout import shard_kind_split, shard_name
from ..contract.views import center_view, sample_views_many
from ..sources.index import CLASSES_KEY, SourceIndex, index_sha256, read_source_index
from .jobdir import JobFolder, family, members

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


PLAN_FORMAT = 2   # one Parquet row group per shard, the shard directory in the footer


def plan_fingerprint(job: JobConfig) -> str:
    """What the plan depends on: a changed value means the plan (and its shards) must be redone."""
    return fingerprint({"seed": job.seed, "data": to_dict(job.data, paths=False), "views": to_dict(job.views),
                        "plan": to_dict(job.plan), "shard_size": job.generate.shard_size,
                        "gen_size": job.generator.size if job.generator else None,
                        "index_sha256": index_sha256(job.data.index), "format": PLAN_FORMAT})


def geometry_many(job: JobConfig, kind: str, split: str, seeds, sources: list[dict] | None = None) -> tuple:
    """(stored widths, stored heights, recorded views [N, K, 5]) of planned samples: real images from
    their source rows' sizes, mixes from the generator's square output."""
    if kind == "real":
        sizes = [stored_size(r["width"], r["height"], job.data.store_size) for r in sources]
    else:
        sizes = [stored_size(job.generator.size, job.generator.size, job.data.store_size)] * len(seeds)
    widths = np.array([w for w, _ in sizes], np.int64)
    heights = np.array([h for _, h in sizes], np.int64)
    if split == "train":
        views = sample_views_many(seeds, widths, heights, job.views.k, job.views)
    else:
        views = np.array([center_view(w, h, job.views) for w, h in sizes], np.float64).reshape(len(sizes), 1, 5)
    return widths, heights, views


def geometry(job: JobConfig, kind: str, split: str, seed: int, source: dict | None = None) -> tuple[int, int, list]:
    """`geometry_many` of one sample: (stored width, stored height, views as [x, y, w, h, flip] lists)."""
    widths, heights, views = geometry_many(job, kind, split, [seed], [source] if source is not None else None)
    return int(widths[0]), int(heights[0]), [[*v[:4], int(v[4])] for v in views[0].tolist()]


def make_row(job: JobConfig, uid: str, split: str, kind: str, *, label: int, class_name: str | None,
             source: dict | None = None, parents: tuple = (), parent_paths: tuple = (),
             weight: float | None = None, shard: str = "") -> PlanRow:
    """One planned sample (regenerate rebuilds a released one with it): the seed from (seed, uid),
    the stored size and views from `geometry`, as `write_plan` makes them for all at once."""
    seed = derive_seed(job.seed, uid)
    width, height, views = geometry(job, kind, split, seed, source)
    return PlanRow(uid=uid, split=split, kind=kind, shard=shard, label=label, class_name=class_name,
                   path=source["path"] if kind == "real" else None, parents=list(parents),
                   parent_paths=list(parent_paths), weight=weight, seed=seed, width=width, height=height,
                   views=views)


def draw_pairs(job: JobConfig, train: list[dict], count: int, rng: np.random.Generator) -> np.ndarray:
    """Parent index pairs [count, 2] by the configured pairing mode (class-agnostic 'any' by default)."""
    labels = np.array([r["label"] for r in train])
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    mode, n = job.plan.pairing, len(train)
    if n < 2:
        raise ConfigError(f"plan: mixing needs at least 2 training images, the index has {n}")
    if mode == "cross-class" and len(by_class) < 2:
        raise ConfigError("plan.pairing: 'cross-class' needs at least 2 classes")
    if mode == "same-class" and not any(len(v) >= 2 for v in by_class.values()):
        raise ConfigError("plan.pairing: 'same-class' needs a class with at least 2 images")
    if mode == "any":
        return _any_pairs(rng, n, count)
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
    return np.array(pairs, np.int64).reshape(-1, 2)


def _any_pairs(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """What `count` rounds of "a = integers(n); b = integers(n); keep if a != b" draw, in blocks:
    `integers(n, size=m)` consumes the stream exactly as m single calls do. A block drawn past the
    last kept pair is drawn again to exactly where the rounds would have stopped (the weights
    are drawn next, from the same stream)."""
    out, have = [], 0
    while have < count:
        need = count - have
        saved = rng.bit_generator.state
        block = rng.integers(n, size=2 * (need + need // (n - 1) + 16)).reshape(-1, 2)
        keep = block[:, 0] != block[:, 1]
        kept = np.cumsum(keep)
        if kept[-1] >= need:
            used = int(np.searchsorted(kept, need)) + 1
            rng.bit_generator.state = saved
            rng.integers(n, size=2 * used)
            block, keep = block[:used], keep[:used]
        out.append(block[keep])
        have += int(keep.sum())
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def draw_weights(job: JobConfig, rng: np.random.Generator, count: int) -> list[float]:
    """The mixing weight of each pair, in pair order (one draw each, as single calls would)."""
    p = job.plan
    if p.weight_law == "fixed":
        return [p.weight] * count
    if p.weight_law == "beta":
        values = rng.beta(p.beta_a, p.beta_a, size=count)
    else:
        values = rng.uniform(p.weight_range[0], p.weight_range[1], size=count)
    return [round(v, 6) for v in values.tolist()]


# -- the plan file ------------------------------------------------------------------------------
SHARDS_KEY = b"tsdistill.shards"     # [[name, rows], ...]: row group i holds shard i
CHUNK_ROWS = 16384                   # rows built at a time (rounded to whole shards)


@dataclass
class _Part:
    """Consecutive planned samples of one (kind, split), numbered into their own shards."""
    kind: str
    split: str
    count: int
    columns: object            # (start, stop) → this part's columns for those rows


def _real_part(job: JobConfig, rows: list[dict], split: str, classes: list[str]) -> _Part:
    def columns(start, stop):
        chunk = rows[start:stop]
        uids = [r["uid"] for r in chunk]
        seeds = [derive_seed(job.seed, u) for u in uids]
        widths, heights, views = geometry_many(job, "real", split, seeds, chunk)
        labels = [r["label"] for r in chunk]
        return {"uid": uids, "label": labels, "class_name": [classes[i] for i in labels],
                "path": [r["path"] for r in chunk], "parents": [[]] * len(chunk), "parent_paths": [[]] * len(chunk),
                "weight": [None] * len(chunk), "seed": seeds, "width": widths, "height": heights, "views": views}
    return _Part("real", split, len(rows), columns)


def _mix_part(job: JobConfig, train: list[dict]) -> _Part:
    count = job.plan.resolve_pool(len(train))
    if count == 0:
        return _Part("mix", "train", 0, None)
    rng = np.random.Generator(np.random.PCG64(job.seed))
    pairs = draw_pairs(job, train, count, rng)
    weights = draw_weights(job, rng, count)

    def columns(start, stop):
        a, b = pairs[start:stop, 0].tolist(), pairs[start:stop, 1].tolist()
        ua, ub = [train[i]["uid"] for i in a], [train[i]["uid"] for i in b]
        uids = [make_uid("mix", job.seed, x, y, i) for i, (x, y) in enumerate(zip(ua, ub), start)]
        seeds = [derive_seed(job.seed, u) for u in uids]
        widths, heights, views = geometry_many(job, "mix", "train", seeds)
        n = len(uids)
        return {"uid": uids, "label": [-1] * n, "class_name": [None] * n, "path": [None] * n,
                "parents": [list(p) for p in zip(ua, ub)],
                "parent_paths": [[train[i]["path"], train[j]["path"]] for i, j in zip(a, b)],
                "weight": weights[start:stop], "seed": seeds, "width": widths, "height": heights, "views": views}
    return _Part("mix", "train", count, columns)


def _views_array(views: np.ndarray):
    import pyarrow as pa

    n, k, _ = views.shape
    inner = pa.ListArray.from_arrays(np.arange(0, n * k * 5 + 1, 5, dtype=np.int32), views.reshape(-1))
    return pa.ListArray.from_arrays(np.arange(0, n * k + 1, k, dtype=np.int32), inner)


def _table(part: _Part, start: int, stop: int, shard_size: int, schema):
    import pyarrow as pa

    cols = part.columns(start, stop)
    n = stop - start
    cols.update(split=[part.split] * n, kind=[part.kind] * n,
                shard=[shard_name(part.kind, part.split, i // shard_size) for i in range(start, stop)])
    arrays = [_views_array(cols[f.name]) if f.name == "views" else pa.array(cols[f.name], type=f.type)
              for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_plan(job: JobConfig, path, index: SourceIndex | None = None, member: JobFolder | None = None,
               job_fingerprint: str | None = None) -> "Plan":
    """Plan every sample of `job` into `path` (a local path or a URL), streamed: rows are drawn a
    chunk at a time and written one row group per shard, so memory does not grow with the job.
    For a generator family `member`: the job's mixes only (the same rows), for its generator.
    `index` and `job_fingerprint` (`plan_fingerprint(job)`, which hashes the index file): when the
    caller has them."""
    import pyarrow.parquet as pq

    index = index or read_source_index(job.data)
    train = index.split("train")  # sorted by uid: hashes, so shards mix the classes
    size = job.generate.shard_size
    parts = [_real_part(job, train, "train", index.classes), _real_part(job, index.split("val"), "val", index.classes),
             _mix_part(job, train)]
    if member is not None:
        parts = parts[2:]
    directory = [[shard_name(p.kind, p.split, i), min(size, p.count - i * size)]
                 for p in parts for i in range(-(-p.count // size))]
    job_fingerprint = job_fingerprint or plan_fingerprint(job)
    fp = job_fingerprint if member is None else member.plan_fingerprint(job_fingerprint)
    schema = plan_schema().with_metadata({CLASSES_KEY: json.dumps(index.classes).encode(),
                                          FINGERPRINT_KEY: fp.encode(),
                                          SHARDS_KEY: json.dumps(directory, separators=(",", ":")).encode()})
    step = size * max(1, CHUNK_ROWS // size)
    with storage.publishing(path) as local:
        # statistics on the shard column only: a footer with min/max of every column of every row
        # group would be megabytes that each reader parses
        with pq.ParquetWriter(local, schema, compression="zstd", write_statistics=["shard"]) as writer:
            for part in parts:
                for start in range(0, part.count, step):
                    writer.write_table(_table(part, start, min(part.count, start + step), size, schema),
                                       row_group_size=size)
    return Plan(path, index.classes, fp, [(name, rows) for name, rows in directory])


class Plan:
    """A written plan: classes, fingerprint and the shard directory (from the footer, cheap to read);
    a shard's rows read when asked for (one row group), never all rows at once."""

    def __init__(self, path, classes: list[str], fingerprint: str, shards: list[tuple[str, int]]):
        self.path, self.classes, self.fingerprint = str(path), classes, fingerprint
        self._shards = {name: (i, rows) for i, (name, rows) in enumerate(shards)}
        self._file = None

    def __getstate__(self):  # an open file does not travel to another process
        return dict(self.__dict__, _file=None)

    def _parquet(self):
        import pyarrow.parquet as pq

        if self._file is None:
            self._file = pq.ParquetFile(storage.open_read(self.path))
        return self._file

    def shard_names(self) -> list[str]:
        return list(self._shards)

    def shard_rows(self, name: str) -> int:
        return self._shards[name][1]

    def __len__(self) -> int:
        return sum(rows for _, rows in self._shards.values())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, (_, rows) in self._shards.items():
            kind, split = shard_kind_split(name)
            out[f"{kind}/{split}"] = out.get(f"{kind}/{split}", 0) + rows
        return out

    def table(self, name: str, columns: list[str] | None = None):
        """Shard `name`'s rows as an Arrow table (its row group)."""
        return self._parquet().read_row_group(self._shards[name][0], columns=columns)

    def rows(self, name: str) -> list[PlanRow]:
        return [PlanRow(**r) for r in self.table(name).to_pylist()]

    def iter_rows(self):
        """Every planned sample, shard by shard in plan order."""
        for name in self._shards:
            yield from self.rows(name)


def read_plan(path) -> Plan:
    """The plan at `path` (a local path or a URL): its footer only; rows are read per shard."""
    import pyarrow.parquet as pq

    if not storage.isfile(path):
        raise UserError(f"{path}: no plan (run `tsd plan` first)")
    try:
        with storage.open_read(path) as f:
            meta = pq.read_schema(f).metadata or {}
    except Exception as e:  # noqa: BLE001 - pyarrow's errors on a damaged file, or a foreign one
        raise UserError(f"{path}: not a readable plan ({first_line(e)}); make it again with `tsd plan`") from None
    if SHARDS_KEY not in meta or CLASSES_KEY not in meta or FINGERPRINT_KEY not in meta:
        raise UserError(f"{path}: not a plan of this tsdistill (an older one, or another file): run `tsd plan` again")
    shards = [(name, rows) for name, rows in json.loads(meta[SHARDS_KEY])]
    return Plan(path, json.loads(meta[CLASSES_KEY]), meta[FINGERPRINT_KEY].decode(), shards)


def plan_stage(job: JobConfig, out, force: bool = False) -> tuple[Plan, bool]:
    """(plan, reused) of the job folder `out`; plan.parquet is rewritten only when its fingerprint
    changed. With generator.kinds, each other generator's release is planned too (`plan_folder`)."""
    fp = plan_fingerprint(job)   # a member's job has the same: they differ in the generator only
    index = functools.cache(lambda: read_source_index(job.data))   # read once, when a plan is written
    planned = [plan_folder(folder, force, fp, index) for folder in family(job, out)]
    return planned[0]


def plan_folder(folder: JobFolder, force: bool = False, job_fingerprint: str | None = None,
                index=None) -> tuple[Plan, bool]:
    """(plan, reused) of one release of the job: the job folder's every sample, or a member's the
    job's mixes only (the same rows), for the member's generator. `job_fingerprint`, `index` (a
    callable giving the SourceIndex): the job's, when the caller has them."""
    job_fingerprint = job_fingerprint or plan_fingerprint(folder.job)
    member = folder if folder.is_member else None

    def write():
        return write_plan(folder.job, folder.plan_path, index() if index else None, member, job_fingerprint).counts()

    fp = folder.plan_fingerprint(job_fingerprint)
    _, reused = reuse(folder.marker("plan"), fp, write, outputs=[folder.plan_path], force=force)
    try:
        return read_plan(folder.plan_path), reused
    except UserError:
        if not reused:
            raise
    reuse(folder.marker("plan"), fp, write, outputs=[folder.plan_path], force=True)  # a damaged plan: make it again
    return read_plan(folder.plan_path), False


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
    out = storage.location(args.out)
    plan, reused = plan_stage(job, out)
    counts = ", ".join(f"{k} {v}" for k, v in plan.counts().items())
    print(f"plan: {counts}; {len(plan.shard_names())} shards{' [reused]' if reused else ''}")
    for member in members(job, out):
        print(f"plan: {member.root}: the same {plan.counts().get('mix/train', 0)} mixes by {member.kind}")
    return 0

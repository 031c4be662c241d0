"""Plan: every sample the generation stage will write, decided up front and deterministically.

One row per output sample (`PlanRow`): real train and val images, and the SD-Mixup pool (pairs of
train images, a mixing weight, a seed, the recorded views), grouped into shards. The same index,
config and seed give a byte-identical plan.parquet, so a rerun, a retry or another worker makes the
same samples. The draws are `stages.draws`; the file's format and its reader `stages.planfile`;
here, the plan written (`write_plan`), the stage that reuses it, and the command.
"""
from __future__ import annotations

import functools
import json

from ..config import JobConfig, add_job_arguments, load_job_args
from ..contract import storage
from ..contract.configlib import files_optional, to_dict
from ..contract.errors import UserError
from ..contract.files import reuse
from ..contract.generators import PROMPTED_KINDS
from ..contract.ids import fingerprint
from ..contract.layout import shard_name
from ..sources.index import CLASSES_KEY, SourceIndex, index_sha256, read_source_index
from .draws import Part, mix_part, real_part
from .jobdir import JobFolder, family, members
from .planfile import FINGERPRINT_KEY, PLAN_FORMAT, SHARDS_KEY, Plan, plan_schema, read_plan, views_array


def plan_inputs(job: JobConfig) -> dict:
    """What the plan depends on, by name (`tsd status` names the ones that changed): a changed value
    means the plan (and its shards) must be redone. The plan's fingerprint is that of this dict."""
    plan = to_dict(job.plan)
    extra = {}
    kinds = (job.generator.kinds or [job.generator.kind]) if job.generator else []
    if any(k in PROMPTED_KINDS for k in kinds):
        # what a prompted pool (the job's or a member's) also depends on; absent otherwise, so other
        # plans keep their fingerprints
        extra = {"prompts": job.generator.templates, "kind": job.generator.kind}
    else:
        plan.pop("class_law")
    return {"seed": job.seed, "data": to_dict(job.data, paths=False), "views": to_dict(job.views),
            "plan": plan, "shard_size": job.generate.shard_size,
            "gen_size": job.generator.size if job.generator else None,
            "index_sha256": index_sha256(job.data.index), "format": PLAN_FORMAT, **extra}


def plan_fingerprint(job: JobConfig) -> str:
    """The fingerprint of `plan_inputs(job)`."""
    return fingerprint(plan_inputs(job))


# -- writing the plan ---------------------------------------------------------------------------
CHUNK_ROWS = 16384                   # rows built at a time (rounded to whole shards)


def _table(part: Part, start: int, stop: int, shard_size: int, schema):
    import pyarrow as pa

    cols = part.columns(start, stop)
    n = stop - start
    cols.update(split=[part.split] * n, kind=[part.kind] * n,
                shard=[shard_name(part.kind, part.split, i // shard_size) for i in range(start, stop)])
    arrays = [views_array(cols[f.name]) if f.name == "views" else pa.array(cols[f.name], type=f.type)
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
    parts = [real_part(job, train, "train", index.classes), real_part(job, index.split("val"), "val", index.classes),
             mix_part(job, train, index.classes)]
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


def plan_stage(job: JobConfig, out, force: bool = False) -> tuple[Plan, bool]:
    """(plan, reused) of the job folder `out`; plan.parquet is rewritten only when its fingerprint
    changed. With generator.kinds, each other generator's release is planned too (`plan_folder`)."""
    inputs = plan_inputs(job)   # a member's job has the same: they differ in the generator only
    index = functools.cache(lambda: read_source_index(job.data))   # read once, when a plan is written
    planned = [plan_folder(folder, force, inputs, index) for folder in family(job, out)]
    return planned[0]


def plan_folder(folder: JobFolder, force: bool = False, inputs: dict | None = None,
                index=None) -> tuple[Plan, bool]:
    """(plan, reused) of one release of the job: the job folder's every sample, or a member's the
    job's mixes only (the same rows), for the member's generator. `inputs` (`plan_inputs`), `index`
    (a callable giving the SourceIndex): the job's, when the caller has them."""
    inputs = inputs if inputs is not None else plan_inputs(folder.job)
    job_fingerprint = fingerprint(inputs)
    member = folder if folder.is_member else None

    def write():
        return write_plan(folder.job, folder.plan_path, index() if index else None, member, job_fingerprint).counts()

    fp, named = folder.plan_fingerprint(job_fingerprint), folder.plan_input_fingerprints(inputs)
    _, reused = reuse(folder.marker("plan"), fp, write, outputs=[folder.plan_path], force=force, inputs=named)
    try:
        return read_plan(folder.plan_path), reused
    except UserError:
        if not reused:
            raise
    # a damaged plan: make it again
    reuse(folder.marker("plan"), fp, write, outputs=[folder.plan_path], force=True, inputs=named)
    return read_plan(folder.plan_path), False


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    add_job_arguments(p, out_required=False)
    p.add_argument("--dry-run", action="store_true", help="print the estimate only (samples, shards, disk, GPU-hours)")


def run(args) -> int:
    """`tsd plan JOB --out DIR` writes the plan; `--dry-run` estimates the job and writes nothing."""
    if args.dry_run:
        from .estimate import print_estimate

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

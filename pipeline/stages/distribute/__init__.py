"""Distributing shards over a Ray cluster: one pool of actors (one per GPU; CPU actors when there
is none) for every release of the job, one shard per task, resume by skipping shards already marked
done, and nothing that waits forever: a deadline per shard (the stalled worker killed, its shard
given to another), bounded retries and restarts that end in one line naming node, host and cause,
workers clamped to what the cluster can place, a pool that follows nodes as they come and go.

The driver is thin, as on a cluster whose nodes share no disk: it reads the plan's footer (the
shard directory), lists what is done, and hands each actor the job, the plan's location and the
job folder's location (URLs, or absolute paths every node can reach), then shard names. Actors
read their shards' rows from the plan and publish to the job folder themselves; the driver never
holds per-sample data. Ray stays in this package; the work itself is `worker.ShardWorker`.

Its parts: `cluster` (joining, sizing the pool), `actor` (the worker process), `driver` (the loop,
deadlines, retries), `pending` (what is left to make); here the stage itself and its command.
"""
from __future__ import annotations

import collections
import os

from ...config import JobConfig, add_device_argument, add_job_arguments, load_job_args
from ...contract import storage
from ...contract.errors import UserError
from ...contract.layout import HEAD_FILE
from ...contract.progress import duration
from ...contract.shards import shard_url
from ...models.teacher_files import weights_sha256
from ..jobdir import JobFolder, family, share_teacher
from ..plan import read_plan
from .actor import ShardActor
from .cluster import check_reachable_paths, clamp_workers, connect
from .driver import Driver, GenerateSummary, Task
from .pending import pending_shards, remove_leftovers


def run_generate(folders: list[JobFolder], *, address: str | None = None, device: str = "auto",
                 progress: bool = True, keep_stale: bool = False) -> GenerateSummary:
    """Generate every planned shard not yet done of every release in `folders` (the job folder and
    its family's members) with one pool of workers in one Ray session. Returns what it did; raises
    JobFailed when shards failed after all retries or workers kept failing (the finished shards
    stay published: a rerun does only the rest). A finished shard made by another teacher head,
    weights, generator or plan is redone; with `keep_stale`, refused in one line instead."""
    import ray

    job = folders[0].job
    plans = [read_plan(f.plan_path) for f in folders]
    teacher_weights = weights_sha256(job.teacher)   # once for the job: one teacher, GBs to hash
    makers = [f.makers(p.fingerprint, teacher_weights) for f, p in zip(folders, plans)]
    todo, stale = [], {}
    for i, (folder, plan) in enumerate(zip(folders, plans)):
        names = plan.shard_names()
        remove_leftovers(folder.root, names)
        pending, found = pending_shards(folder.root, names, makers[i])
        if found and keep_stale:
            name, why = next(iter(found.items()))
            raise UserError(f"{shard_url(folder.root, name)}: stale shard ({why}; {len(found)} stale in "
                            f"{folder.root}) and --keep-stale given; rerun without it to redo them")
        todo += [Task(i, n) for n in pending]
        stale.update({(i, n): why for n, why in found.items()})
    total = sum(len(p.shard_names()) for p in plans)
    reasons = tuple(sorted(collections.Counter(stale.values()).items()))
    summary = GenerateSummary(shards=total, skipped=total - len(todo), redone=len(stale), stale_reasons=reasons)
    if not todo:
        return summary
    check_reachable_paths(job)
    started = connect(address or job.generate.address)
    try:
        gpu = int(ray.cluster_resources().get("GPU", 0)) > 0
        asked, _ = clamp_workers(job.generate, gpu)
        actor_cls = ray.remote(num_gpus=1 if gpu else 0, num_cpus=job.generate.cpus_per_worker,
                               max_restarts=0, max_task_retries=0)(ShardActor)  # the driver restarts and retries
        spec = [(f.job, f.root, f.plan_path, m) for f, m in zip(folders, makers)]
        busy = sorted({t.folder for t in todo})
        driver = Driver(lambda: actor_cls.remote(spec, "cuda" if gpu else device, busy), job.generate, asked, gpu,
                        progress)
        summary = driver.run(todo, summary)
    finally:
        if started:
            ray.shutdown()
    return summary


def generate_stage(job: JobConfig, out, address: str | None = None, device: str = "auto",
                   progress: bool = True, keep_stale: bool = False) -> GenerateSummary:
    """Every planned shard of the job folder `out` not yet done (the probe's head must exist), and
    of each other generator's release (generator.kinds), by one pool of workers; what it did."""
    out = storage.location(out)
    if not storage.isfile(storage.join(out, HEAD_FILE)):
        raise UserError(f"{storage.join(out, HEAD_FILE)}: no teacher head (run `tsd probe` first)")
    folders = family(job, out)
    for member in folders[1:]:
        share_teacher(out, member)
    return run_generate(folders, address=address, device=device, progress=progress, keep_stale=keep_stale)


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    add_job_arguments(p)
    add_device_argument(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local cluster, or RAY_ADDRESS)")
    p.add_argument("--keep-stale", action="store_true",
                   help="refuse, naming the first, when finished shards were made by another teacher head, "
                        "weights, generator or plan (default: redo them)")


def summary_text(s: GenerateSummary) -> str:
    """What generate did, in one line (`tsd generate`, `tsd run`), its time rounded (`duration`)."""
    lost = f", {s.workers_lost} worker(s) lost, {s.retries} shard(s) retried" if s.workers_lost or s.retries else ""
    redone = (f", {s.redone} redone (stale: " + "; ".join(f"{why}: {n}" for why, n in s.stale_reasons) + ")"
              if s.redone else "")
    return (f"{s.done} shards made, {s.skipped} already done{redone}, {s.samples} samples, "
            f"{s.failures} failed samples, {duration(s.seconds)}{lost}")


def run(args) -> int:
    address = args.address or os.environ.get("RAY_ADDRESS")
    out = storage.location(args.out)
    s = generate_stage(load_job_args(args), out, address=address, device=args.device, keep_stale=args.keep_stale)
    print(f"generate: {summary_text(s)}")
    return 0

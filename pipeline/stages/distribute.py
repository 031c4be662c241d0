"""Distributing shards over a Ray cluster: one actor per GPU (CPU actors when there is none),
one shard per task, retries when a worker dies, resume by skipping shards already marked done.

Ray stays in this module; the work itself is `worker.ShardWorker`, testable without a cluster.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..config import JobConfig, add_device_argument, add_job_arguments, load_job_args
from ..contract.errors import UserError
from ..contract.layout import HEAD_FILE, SHARD_FOLDERS, SHARD_SUFFIX, STATS_SUFFIX
from ..contract.shards import read_stats
from .jobdir import plan_path
from .plan import read_plan


class ShardActor:
    """Holds the loaded models for the life of the process; runs one planned shard per call."""

    def __init__(self, job: JobConfig, release_dir: str, plan_path: str, device: str):
        from .worker import ShardWorker

        plan = read_plan(plan_path)
        self.shards, self.fingerprint = plan.shards(), plan.fingerprint
        self.worker = ShardWorker(job, release_dir, device=device)

    def pid(self) -> int:
        return os.getpid()

    def run(self, name: str) -> dict:
        stats = self.worker.run_shard(name, self.shards[name], self.fingerprint)
        # the per-sample records are for the release step (it reads them from disk); keep replies small
        return {k: v for k, v in stats.items() if k != "samples"}


def pending_shards(release_dir: str | Path, names: list[str], plan: str) -> list[str]:
    return [n for n in names if read_stats(release_dir, n, plan) is None]


def remove_leftovers(release_dir: str | Path, planned: list[str]) -> None:
    """Temporary files of writers that died (their shard is redone), and shards of an earlier plan
    that the current one no longer has (a smaller pool, a larger shard size)."""
    planned = set(planned)
    for prefix in SHARD_FOLDERS:
        folder = Path(release_dir) / prefix
        if not folder.is_dir():
            continue
        for tmp in folder.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)
        for tar in folder.glob(f"*{SHARD_SUFFIX}"):
            name = f"{prefix}/{tar.name[:-len(SHARD_SUFFIX)]}"
            if name not in planned:
                tar.unlink()
                (folder / f"{tar.name[:-len(SHARD_SUFFIX)]}{STATS_SUFFIX}").unlink(missing_ok=True)


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Join a cluster (address) or start a local one. Returns True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True)
    return True


def run_generate(job: JobConfig, release_dir: str | Path, plan_path: str | Path, *,
                 address: str | None = None, device: str = "auto", progress: bool = True) -> dict:
    """Generate every planned shard not yet done. Returns a summary; raises when shards failed
    after all retries (the finished ones stay published: a rerun does only the rest)."""
    import ray
    from tqdm import tqdm

    release_dir = Path(release_dir).resolve()
    plan = read_plan(plan_path)
    names = list(plan.shards())
    todo = pending_shards(release_dir, names, plan.fingerprint)
    summary = {"shards": len(names), "skipped": len(names) - len(todo), "done": 0, "samples": 0,
               "failures": 0, "seconds": 0.0}
    remove_leftovers(release_dir, names)
    if not todo:
        return summary
    started = connect(address or job.generate.address)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n_actors = job.generate.workers or max(gpus, 1)
        retries = job.generate.max_retries
        actor_cls = ray.remote(
            num_gpus=1 if gpus else 0, num_cpus=job.generate.cpus_per_worker,
            max_restarts=-1, max_task_retries=retries,  # a dead actor restarts; its task reruns
        )(ShardActor)
        actors = [actor_cls.remote(job, str(release_dir), str(Path(plan_path).resolve()),
                                   "cuda" if gpus else device) for _ in range(min(n_actors, len(todo)))]
        summary.update(_drive(actors, todo, summary, progress, tqdm))
    finally:
        if started:
            ray.shutdown()
    return summary


def _drive(actors, todo: list[str], summary: dict, progress: bool, tqdm) -> dict:
    """Keep every actor busy with one shard at a time; collect stats as shards finish."""
    import ray

    t0 = time.time()
    queue = list(todo)
    in_flight, failed = {}, []
    bar = tqdm(total=len(todo), desc="generate", unit="shard", disable=not progress)
    idle = list(actors)
    while queue or in_flight:
        while idle and queue:
            actor, name = idle.pop(), queue.pop(0)
            in_flight[actor.run.remote(name)] = (actor, name)
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            actor, name = in_flight.pop(ref)
            idle.append(actor)
            try:
                stats = ray.get(ref)
            except ray.exceptions.RayError as e:  # retries exhausted: report it, keep the others going
                failed.append((name, str(e).splitlines()[0]))
                continue
            summary["done"] += 1
            summary["samples"] += stats["count"]
            summary["failures"] += len(stats["failures"])
            bar.update(1)
            bar.set_postfix(img_s=f"{summary['samples'] / max(time.time() - t0, 1e-9):.1f}")
    bar.close()
    summary["seconds"] = round(time.time() - t0, 2)
    if failed:
        lines = "; ".join(f"{n}: {why}" for n, why in failed)
        raise RuntimeError(f"{len(failed)} shard(s) failed after retries ({lines}); rerun to redo them")
    return summary


def generate_stage(job: JobConfig, out: str | Path, address: str | None = None, device: str = "auto",
                   progress: bool = True) -> dict:
    """Every planned shard of the job folder `out` not yet done (the probe's head must exist)."""
    if not (Path(out) / HEAD_FILE).is_file():
        raise UserError(f"{Path(out) / HEAD_FILE}: no teacher head (run `tsd probe` first)")
    return run_generate(job, out, plan_path(out), address=address, device=device, progress=progress)


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    add_job_arguments(p)
    add_device_argument(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local cluster, or RAY_ADDRESS)")


def run(args) -> int:
    address = args.address or os.environ.get("RAY_ADDRESS")
    s = generate_stage(load_job_args(args), args.out, address=address, device=args.device)
    print(f"generate: {s['done']} shards made, {s['skipped']} already done, {s['samples']} samples, "
          f"{s['failures']} failed samples, {s['seconds']} s")
    return 0

"""Distributing shards over a Ray cluster: one actor per GPU (CPU actors when there is none),
one shard per task, retries when a worker dies, resume by skipping shards already marked done.

The driver is thin, as on a cluster whose nodes share no disk: it reads the plan's footer (the
shard directory), lists what is done, and hands each actor the job, the plan's location and the
job folder's location (URLs, or absolute paths every node can reach), then shard names. Actors
read their shards' rows from the plan and publish to the job folder themselves; the driver never
holds per-sample data. Ray stays in this module; the work itself is `worker.ShardWorker`.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time

from ..config import JobConfig, add_device_argument, add_job_arguments, load_job_args
from ..contract import storage
from ..contract.errors import JobFailed, UserError, first_line
from ..contract.layout import HEAD_FILE, SHARD_FOLDERS, SHARD_SUFFIX
from ..contract.progress import Progress
from ..contract.shards import finished_shards, shard_url, stats_url
from .family import members, share_teacher
from .jobdir import plan_path
from .plan import read_plan


class ShardActor:
    """Holds the loaded models for the life of the process; runs one planned shard per call."""

    def __init__(self, job: JobConfig, release_dir: str, plan_location: str, device: str):
        import ray

        from .worker import ShardWorker

        self.plan = read_plan(plan_location)
        origin = {"node_id": ray.get_runtime_context().get_node_id()}
        self.worker = ShardWorker(job, release_dir, device=device, origin=origin)

    def pid(self) -> int:
        return os.getpid()

    def run(self, name: str) -> dict:
        stats = self.worker.run_shard(name, self.plan.rows(name), self.plan.fingerprint)
        # the per-sample records are for the release step (it reads them from storage); keep replies small
        return {k: v for k, v in stats.items() if k != "samples"}


def pending_shards(release_dir, names: list[str], plan: str) -> list[str]:
    done = finished_shards(release_dir, names, plan, keep=lambda stats: None)
    return [n for n in names if n not in done]


def remove_leftovers(release_dir, planned: list[str]) -> None:
    """Temporary files of local writers that died (their shard is redone), and shards of an earlier
    plan that the current one no longer has (a smaller pool, a larger shard size)."""
    planned = set(planned)
    for prefix in SHARD_FOLDERS:
        folder = storage.join(release_dir, prefix)
        for name in storage.listing(folder):
            if name.startswith(".") and storage.TMP_MARK in name:
                storage.remove(storage.join(folder, name))
            elif name.endswith(SHARD_SUFFIX) and f"{prefix}/{name[:-len(SHARD_SUFFIX)]}" not in planned:
                shard = f"{prefix}/{name[:-len(SHARD_SUFFIX)]}"
                storage.remove(shard_url(release_dir, shard))
                storage.remove(stats_url(release_dir, shard))


# -- joining a cluster ----------------------------------------------------------------------------
def token_file() -> str:
    """Where this process's Ray looks for the cluster token (after RAY_AUTH_TOKEN itself)."""
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")


def auth_hint(address: str) -> str:
    mode = os.environ.get("RAY_AUTH_MODE") or "unset"
    return (f"the Ray cluster at {address} refused this driver's authentication (RAY_AUTH_MODE is {mode}, "
            f"token file {token_file()}): set RAY_AUTH_MODE=token and give it the cluster's token in that file "
            "(or RAY_AUTH_TOKEN_PATH=<file> / RAY_AUTH_TOKEN=<token>), as on every node")


def is_auth_failure(exc: BaseException) -> bool:
    """True when `exc` (e.g. ray.init's ConnectionError) comes from token authentication; Ray keeps the
    AuthenticationError only as text in the chain's messages."""
    from ray.exceptions import AuthenticationError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, AuthenticationError) or "InvalidAuthToken" in str(exc) \
                or "AuthenticationError" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _stderr_captured():
    """Ray's C++ client logs every failed try on file descriptor 2; keep them out of the user's way
    (the one-line error says what went wrong), and give them back when the connection works."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def check_cluster(address: str) -> None:
    """A quick look at the cluster's GCS before `ray.init`: a driver without the cluster's token
    would otherwise retry for 20 s and end in a traceback. One UserError line instead."""
    try:
        from ray._raylet import GcsClient  # what ray.init itself calls (private: skipped if it moves)
        from ray.exceptions import AuthenticationError
    except ImportError:
        return
    try:
        with _stderr_captured():
            GcsClient(address=address)
    except AuthenticationError:
        raise UserError(auth_hint(address)) from None
    except Exception as e:  # noqa: BLE001 - RpcError and friends: the cluster is not there
        raise UserError(f"cannot reach the Ray cluster at {address}: {first_line(e)}") from None


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Join a cluster (address) or start a local one. Returns True when this call started Ray.

    Quiet: Ray's own INFO lines ("Started a local Ray instance") are off; workers' output still
    reaches the driver. A local cluster lives only as long as this job and runs only its actors,
    so it starts without token authentication (RAY_AUTH_MODE=disabled, unless the environment sets
    a mode), which also drops Ray's notice about that default on every run."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    if address:
        if not address.startswith("ray://") and address != "auto":
            check_cluster(address)
        try:
            ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
        except ConnectionError as e:
            if is_auth_failure(e):
                raise UserError(auth_hint(address)) from None
            raise UserError(f"cannot connect to the Ray cluster at {address}: {first_line(e)}") from None
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True,
                 logging_level=logging.WARNING)
    return True


def check_reachable_paths(job: JobConfig) -> None:
    """The job's files are opened on every node: a path inside a Ray job's package folder (a
    per-node scratch copy) would name a file that only the driver's node has, there."""
    for key, value in (("data.index", job.data.index), ("teacher.weights", job.teacher.weights),
                       ("generator.path", job.generator.path if job.generator else None)):
        if value and storage.is_local(value) and storage.RAY_PACKAGE_DIR in str(value).replace(os.sep, "/"):
            raise UserError(f"{key}: {value} lies in Ray's per-node package folder (a relative path of a job "
                            "submitted with --working-dir); give an absolute path on a disk every node "
                            "mounts, or a URL")


# -- the run --------------------------------------------------------------------------------------
def run_generate(job: JobConfig, release_dir, plan_location, *, address: str | None = None, device: str = "auto",
                 progress: bool = True) -> dict:
    """Generate every planned shard not yet done. Returns a summary; raises when shards failed
    after all retries (the finished ones stay published: a rerun does only the rest)."""
    import ray

    release_dir, plan_location = storage.location(release_dir), storage.absolute(plan_location)
    plan = read_plan(plan_location)
    names = plan.shard_names()
    todo = pending_shards(release_dir, names, plan.fingerprint)
    summary = {"shards": len(names), "skipped": len(names) - len(todo), "done": 0, "samples": 0,
               "failures": 0, "seconds": 0.0}
    remove_leftovers(release_dir, names)
    if not todo:
        return summary
    check_reachable_paths(job)
    started = connect(address or job.generate.address)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n_actors = job.generate.workers or max(gpus, 1)
        retries = job.generate.max_retries
        actor_cls = ray.remote(
            num_gpus=1 if gpus else 0, num_cpus=job.generate.cpus_per_worker,
            max_restarts=-1, max_task_retries=retries,  # a dead actor restarts; its task reruns
        )(ShardActor)
        actors = [actor_cls.remote(job, release_dir, plan_location, "cuda" if gpus else device)
                  for _ in range(min(n_actors, len(todo)))]
        summary.update(_drive(actors, todo, summary, progress))
    finally:
        if started:
            ray.shutdown()
    return summary


def _drive(actors, todo: list[str], summary: dict, progress: bool) -> dict:
    """Keep every actor busy with one shard at a time; count shards and samples as they finish."""
    import ray

    t0 = time.time()
    queue = list(todo)
    in_flight, failed = {}, []
    bar = Progress("generate", len(todo), unit="shards", enabled=progress)
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
                failed.append((name, first_line(e)))
                continue
            summary["done"] += 1
            summary["samples"] += stats["count"]
            summary["failures"] += len(stats["failures"])
            bar.update(1, images=stats["count"])
    bar.close()
    summary["seconds"] = round(time.time() - t0, 2)
    if failed:
        lines = "; ".join(f"{n}: {why}" for n, why in failed)
        raise JobFailed(f"{len(failed)} shard(s) failed after retries ({lines}); rerun to redo them")
    return summary


def generate_stage(job: JobConfig, out, address: str | None = None, device: str = "auto",
                   progress: bool = True) -> dict:
    """Every planned shard of the job folder `out` not yet done (the probe's head must exist), and
    of each other generator's release (generator.kinds), in one Ray session; the summed summary."""
    out = storage.location(out)
    if not storage.isfile(storage.join(out, HEAD_FILE)):
        raise UserError(f"{storage.join(out, HEAD_FILE)}: no teacher head (run `tsd probe` first)")
    family = members(job, out)
    if not family:
        return run_generate(job, out, plan_path(out), address=address, device=device, progress=progress)
    import ray

    folders = [(job, out)]
    for member in family:
        share_teacher(out, member)
        folders.append((member.job, member.root))
    plans = [read_plan(plan_path(root)) for _, root in folders]
    todo = any(pending_shards(root, plan.shard_names(), plan.fingerprint) for (_, root), plan in zip(folders, plans))
    started = connect(address or job.generate.address) if todo else False
    try:
        parts = [run_generate(j, root, plan_path(root), address=address, device=device, progress=progress)
                 for j, root in folders]
    finally:
        if started:
            ray.shutdown()
    return {key: sum(part[key] for part in parts) for key in parts[0]}


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    add_job_arguments(p)
    add_device_argument(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local cluster, or RAY_ADDRESS)")


def run(args) -> int:
    address = args.address or os.environ.get("RAY_ADDRESS")
    out = storage.location(args.out)
    s = generate_stage(load_job_args(args), out, address=address, device=args.device)
    print(f"generate: {s['done']} shards made, {s['skipped']} already done, {s['samples']} samples, "
          f"{s['failures']} failed samples, {s['seconds']} s")
    return 0

"""Distributing shards over a Ray cluster: one pool of actors (one per GPU; CPU actors when there
is none) for every release of the job, one shard per task, resume by skipping shards already marked
done, and nothing that waits forever: a deadline per shard (the stalled worker killed, its shard
given to another), bounded retries and restarts that end in one line naming node, host and cause,
workers clamped to what the cluster can place, a pool that follows nodes as they come and go.

The driver is thin, as on a cluster whose nodes share no disk: it reads the plan's footer (the
shard directory), lists what is done, and hands each actor the job, the plan's location and the
job folder's location (URLs, or absolute paths every node can reach), then shard names. Actors
read their shards' rows from the plan and publish to the job folder themselves; the driver never
holds per-sample data. Ray stays in this module; the work itself is `worker.ShardWorker`.
"""
from __future__ import annotations

import collections
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace

from ..config import GenerateConfig, JobConfig, add_device_argument, add_job_arguments, load_job_args
from ..contract import storage
from ..contract.errors import JobFailed, UserError, first_line, short_error
from ..contract.layout import HEAD_FILE, SHARD_FOLDERS, SHARD_SUFFIX, shard_kind_split
from ..contract.progress import Progress, duration
from ..contract.shards import IDENTITY_FIELDS, finished_shards, shard_identity, shard_url, stale_reason, stats_url
from ..models.teacher_files import weights_sha256
from .jobdir import JobFolder, family, share_teacher
from .plan import read_plan


class ShardActor:
    """One worker process of the pool: one teacher and, per release of the job, one `ShardWorker`
    (with its own generator, built on first use); one planned shard per call.

    Its constructor never raises: a worker that cannot start (weights missing on its node, out of
    memory) says why in `ready()`, with its node and host, so the driver ends the job in one line
    instead of Ray restarting it forever."""

    def __init__(self, folders: list[tuple[JobConfig, str, str, dict]], device: str, busy: list[int]):
        """`folders`: (job, root, plan location, makers: `JobFolder.makers`) of every release of the
        job; `busy`: those with shards to make, whose models (the teacher, each one's generator) load
        now, under the start's deadline rather than the first shard's."""
        import ray

        self.folders, self.device = folders, device
        self.node = ray.get_runtime_context().get_node_id()
        self.workers: dict = {}
        self.plans: dict = {}
        self.error = None
        try:
            for folder in busy:
                if any(shard_kind_split(n)[0] == "mix" for n in self._plan(folder).shard_names()):
                    self._worker(folder).generator  # noqa: B018 - built on first use: use it now
                else:
                    self._worker(folder)
        except Exception as e:  # noqa: BLE001 - reported by ready(), the driver decides
            self.error = short_error(e)

    def ready(self) -> dict:
        from . import worker

        return {"node_id": self.node, "host": socket.gethostname(), "pid": os.getpid(), "error": self.error,
                "teacher_loads": worker.TEACHER_LOADS}

    def _worker(self, folder: int):
        from . import worker

        if folder not in self.workers:
            job, root, _, _ = self.folders[folder]
            shared = next(iter(self.workers.values())).teacher if self.workers else None  # one head for all
            self.workers[folder] = worker.ShardWorker(job, root, device=self.device, origin={"node_id": self.node},
                                                      teacher=shared)
        return self.workers[folder]

    def _plan(self, folder: int):
        if folder not in self.plans:
            self.plans[folder] = read_plan(self.folders[folder][2])
        return self.plans[folder]

    def run(self, folder: int, name: str) -> dict:
        from . import worker

        plan = self._plan(folder)
        stats = self._worker(folder).run_shard(name, plan.rows(name), self.folders[folder][3])
        # the per-sample records are for the release step (it reads them from storage); keep replies small
        return {**{k: v for k, v in stats.items() if k != "samples"}, "teacher_loads": worker.TEACHER_LOADS}


def pending_shards(release_dir, names: list[str], makers: dict) -> tuple[list[str], dict[str, str]]:
    """(the shards to make, {stale shard: what differs}): a shard is done when it is finished and
    its stats record the identity the shard would have now (`makers`: `JobFolder.makers`); one made
    by another teacher head, weights, generator or plan, or one recording no identity, is stale and
    redone (the stats are small: read them all, concurrently from object storage)."""
    done = finished_shards(release_dir, names, keep=lambda stats: {k: stats[k] for k in IDENTITY_FIELDS if k in stats})
    stale = {n: why for n in names if n in done
             and (why := stale_reason(done[n], shard_identity(n, **makers))) is not None}
    return [n for n in names if n not in done or n in stale], stale


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
@dataclass(frozen=True)
class GenerateSummary:
    """What `generate` did over every release of the job, with one pool of workers."""
    shards: int                  # planned, in every release of the job
    skipped: int                 # already done before this run (resumed, not made again)
    redone: int = 0              # found finished but stale (made by another head, weights, generator, plan): remade
    stale_reasons: tuple = ()    # (what differs, how many shards) of those
    done: int = 0                # shards made by this run
    samples: int = 0             # samples in those shards
    failures: int = 0            # samples that failed (their shard is published without them)
    seconds: float = 0.0         # the pool's wall time
    workers: int = 0             # workers started, replacements included
    teacher_loads: int = 0       # over all workers: one each, however many generator kinds
    workers_lost: int = 0        # died, stalled or failed to start
    retries: int = 0             # shards given to another try

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Task:
    """One shard of one release of the job (`folder`: its place in the job's list of folders)."""
    folder: int
    name: str


class Deadline:
    """How long a shard may run: `generate.deadline_s` when set, else a multiple of the median
    shard time measured so far in this job, never below a floor that covers loading the models
    (the only figure before any shard has finished). A worker's start (loading the teacher) has
    a deadline of its own, `generate.start_deadline_s`."""

    def __init__(self, gen: GenerateConfig):
        self.fixed, self.factor, self.floor = gen.deadline_s, gen.deadline_factor, gen.deadline_floor_s
        self.start = gen.start_deadline_s
        self.times: list[float] = []

    def add(self, seconds: float) -> None:
        self.times.append(seconds)

    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    def shard(self) -> float:
        if self.fixed is not None:
            return self.fixed
        median = self.median()
        return self.floor if median is None else max(self.floor, self.factor * median)

    def straggling(self, seconds: float) -> bool:
        """Late enough to be named on the progress line: twice the median (or half the deadline)."""
        median = self.median()
        return seconds > (max(1.0, 2 * median) if median is not None else self.shard() / 2)


@dataclass
class Slot:
    """A worker of the pool as the driver sees it: starting, idle or running one task."""
    actor: object
    born: float
    starting: object = None     # the ref of ready() until it answers
    where: str = "a node not known yet"
    task: Task | None = None
    ref: object = None
    since: float = 0.0
    loads: int = 0
    first: bool = False         # one of the pool's first workers (see Driver.run)


def placeable(cpus_per_worker: float, gpu: bool) -> int:
    """Workers the cluster's live nodes can hold at once (each asks cpus_per_worker CPUs, and one GPU
    when there are GPUs): more would wait forever for resources."""
    import ray

    count = 0
    for node in ray.nodes():
        if node.get("Alive"):
            res = node.get("Resources", {})
            fit = int(res.get("CPU", 0) / cpus_per_worker + 1e-9)
            count += min(fit, int(res.get("GPU", 0))) if gpu else fit
    return count


def clamp_workers(gen: GenerateConfig, gpu: bool) -> tuple[int, int]:
    """(workers asked for, workers to start now): clamped to what the cluster can place, with a note;
    a one-line refusal when it can place none. Never a wait."""
    import ray

    resources = ray.cluster_resources()
    asked = gen.workers or max(int(resources.get("GPU", 0)), 1)
    fits = placeable(gen.cpus_per_worker, gpu)
    each = f"{gen.cpus_per_worker:g} CPU{'s' if gen.cpus_per_worker != 1 else ''}" + (" and 1 GPU" if gpu else "")
    if fits == 0:
        raise UserError(f"generate.cpus_per_worker: no node of the cluster can hold a worker of {each} "
                        f"(the cluster has {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs "
                        f"over {sum(1 for n in ray.nodes() if n.get('Alive'))} node(s))")
    if asked > fits:
        print(f"generate: note: {asked} workers asked (generate.workers), the cluster holds {fits} of {each}: "
              f"starting {fits}, more if nodes join", file=sys.stderr)
    return asked, min(asked, fits)


def describe(info: dict) -> str:
    return f"node {str(info.get('node_id'))[:12]}, host {info.get('host')}, pid {info.get('pid')}"


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


def eta_by_kind(times: dict[str, list[float]], queued: dict[str, int], running: list[tuple[str, float]],
                workers: int) -> float | None:
    """Seconds left, per kind of shard: real shards (the teacher only) are much faster than mix
    shards (the generator too), so each kind's shards left count at the mean time of that kind's
    finished shards; a kind none of whose shards has finished counts at the slowest kind's mean.
    `queued`: kind → shards waiting; `running`: (kind, seconds it has run) of each running shard;
    the work is shared by `workers`. None before any shard has finished."""
    means = {kind: sum(t) / len(t) for kind, t in times.items() if t}
    if not means:
        return None
    slowest = max(means.values())
    work = sum(n * means.get(kind, slowest) for kind, n in queued.items())
    work += sum(max(0.0, means.get(kind, slowest) - ran) for kind, ran in running)
    return work / max(1, workers)


class Driver:
    """Keeps every worker busy with one shard at a time, and nothing waiting forever: a shard past
    its deadline has its worker killed and goes to another, a worker that died or could not start
    is replaced (at most generate.max_restarts times in the job), a shard is retried at most
    generate.max_retries times, and the pool grows when nodes join."""

    POLL_S = 0.5           # how often deadlines are checked while nothing finishes
    CAPACITY_EVERY_S = 2.0

    def __init__(self, make_actor, gen: GenerateConfig, asked: int, gpu: bool, progress: bool):
        self.make_actor, self.gen, self.asked, self.gpu, self.progress = make_actor, gen, asked, gpu, progress
        self.deadline = Deadline(gen)
        self.slots: list[Slot] = []
        self.started = 0                     # workers started
        self.lost = 0                        # workers lost (died, stalled, failed to start)
        self.tries: dict[Task, int] = {}
        self.failed: dict[Task, str] = {}
        self.loads: list[int] = []           # teacher loads of workers gone
        self.done = self.samples = self.failures = self.retries = 0   # shards made, their samples, …
        self.capacity, self._capacity_at = 0, -1e9
        self.times: dict[str, list[float]] = collections.defaultdict(list)   # shard kind → finished shards' seconds

    # -- the pool --------------------------------------------------------------------------------
    def _capacity(self) -> int:
        now = time.monotonic()
        if now - self._capacity_at >= self.CAPACITY_EVERY_S:
            self.capacity, self._capacity_at = placeable(self.gen.cpus_per_worker, self.gpu), now
        return self.capacity

    def _top_up(self, remaining: int) -> None:
        """Start workers up to what was asked, what the cluster holds now and what is left to do."""
        want = min(self.asked, self._capacity(), remaining)
        first = self.started == 0
        while len(self.slots) < want:
            actor = self.make_actor()
            self.slots.append(Slot(actor, time.monotonic(), starting=actor.ready.remote(), first=first))
            self.started += 1

    def _drop(self, slot: Slot, cause: str, queue: list[Task] | None = None) -> None:
        """Kill a worker (not politely: it may be stopped or stuck in a driver call) and count it lost;
        past generate.max_restarts, the job ends here in one line. `queue`: a worker lost while
        starting gives back the shard waiting for it (not a retry: it never ran)."""
        import ray

        if queue is not None and slot.task is not None:
            queue.insert(0, slot.task)
        self.slots.remove(slot)
        self.loads.append(slot.loads)
        ray.kill(slot.actor, no_restart=True)
        self.lost += 1
        if self.lost > self.gen.max_restarts:
            raise JobFailed(f"generate: workers lost {self.lost} times (generate.max_restarts "
                            f"{self.gen.max_restarts}); the last: {cause}; the finished shards are kept, "
                            "rerun to do the rest")

    def _retry(self, task: Task, cause: str, queue: list[Task]) -> None:
        self.tries[task] = self.tries.get(task, 0) + 1
        if self.tries[task] > self.gen.max_retries:
            self.failed[task] = cause
        else:
            queue.insert(0, task)   # next: its samples are needed as much as any

    # -- the loop --------------------------------------------------------------------------------
    def run(self, todo: list[Task], summary: GenerateSummary) -> GenerateSummary:
        """Every task of `todo`; `summary` (what was planned and skipped) with what this run did."""
        import ray

        t0 = time.time()
        queue, empty_since = list(todo), None
        bar = Progress("generate", len(todo), unit="shards", enabled=self.progress)
        try:
            while queue or any(s.task for s in self.slots):
                self._top_up(len(queue) + sum(1 for s in self.slots if s.task))
                # the first workers get a shard while starting (it runs right after ready()), so that every
                # node takes work even if one starts slowly; a replacement or a worker of a node that joined
                # waits for ready(): it may never be placed (its node lost), and must hold no shard meanwhile
                for slot in self.slots:
                    if queue and slot.task is None and (slot.starting is None or slot.first):
                        slot.task, slot.since = queue.pop(0), time.monotonic()
                        slot.ref = slot.actor.run.remote(slot.task.folder, slot.task.name)
                waiting = {s.starting: s for s in self.slots if s.starting is not None}
                waiting.update({s.ref: s for s in self.slots if s.task is not None and s.starting is None})
                if not waiting:   # no node can hold a worker now (all lost): wait for one, boundedly
                    empty_since = empty_since or time.monotonic()
                    if time.monotonic() - empty_since > self.deadline.start:
                        raise JobFailed(f"generate: no node of the cluster could hold a worker for "
                                        f"{self.deadline.start:.0f} s (nodes lost?); the finished shards are kept")
                    time.sleep(self.POLL_S)
                    continue
                empty_since = None
                ready, _ = ray.wait(list(waiting), num_returns=1, timeout=self.POLL_S)
                if ready:
                    ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
                for ref in ready:
                    self._answer(waiting[ref], ref, queue, bar)
                self._late(queue)
                self._name_stragglers(bar)
                self._eta(queue, bar)
        finally:
            bar.close()
            self._shutdown()
        summary = replace(summary, done=self.done, samples=self.samples, failures=self.failures,
                          seconds=round(time.time() - t0, 2), workers=self.started, teacher_loads=sum(self.loads),
                          workers_lost=self.lost, retries=self.retries)
        if self.failed:
            lines = "; ".join(f"{t.name if t.folder == 0 else f'{t.folder}:{t.name}'}: {why}"
                              for t, why in self.failed.items())
            raise JobFailed(f"{len(self.failed)} shard(s) failed after {self.gen.max_retries} retries ({lines}); "
                            "the finished shards are kept: rerun to redo them, or `tsd release --allow-missing "
                            f"{len(self.failed)}` to release without them")
        return summary

    def _answer(self, slot: Slot, ref, queue: list[Task], bar: Progress) -> None:
        import ray

        if ref is slot.starting:
            slot.starting, slot.since = None, time.monotonic()   # its first shard's deadline starts now
            try:
                info = ray.get(ref)
            except ray.exceptions.RayError as e:
                return self._drop(slot, f"a worker died while starting on {slot.where}: {first_line(e)}", queue)
            slot.where, slot.loads = describe(info), info["teacher_loads"]
            if info["error"]:
                self._drop(slot, f"a worker failed to start on {slot.where}: {info['error']}", queue)
            return
        task, slot.task, slot.ref = slot.task, None, None
        try:
            stats = ray.get(ref)
        except ray.exceptions.RayActorError as e:   # the process died (killed, out of memory, its node lost)
            self.retries += 1
            self._retry(task, f"its worker died on {slot.where}: {first_line(e)}", queue)
            return self._drop(slot, f"a worker died on {slot.where} making {task.name}: {first_line(e)}")
        except ray.exceptions.RayError as e:        # the shard raised: the worker is fine
            self.retries += 1
            return self._retry(task, f"on {slot.where}: {first_line(getattr(e, 'cause', None) or e)}", queue)
        self.deadline.add(time.monotonic() - slot.since)
        self.times[shard_kind_split(task.name)[0]].append(time.monotonic() - slot.since)
        slot.loads = stats["teacher_loads"]
        self.done += 1
        self.samples += stats["count"]
        self.failures += len(stats["failures"])
        bar.update(1, images=stats["count"])

    def _late(self, queue: list[Task]) -> None:
        """Kill the workers past their deadline (a shard's, or a start's); their shard goes to another."""
        now = time.monotonic()
        for slot in list(self.slots):
            if slot.task is not None and slot.starting is None and now - slot.since > self.deadline.shard():
                task = slot.task
                cause = f"{task.name} passed its deadline of {self.deadline.shard():.0f} s on {slot.where}"
                self.retries += 1
                self._retry(task, cause, queue)
                self._drop(slot, cause)
            elif slot.starting is not None and now - slot.born > self.deadline.start:
                self._drop(slot, f"a worker did not start within {self.deadline.start:.0f} s "
                                 f"(generate.start_deadline_s) on {slot.where}", queue)

    def _eta(self, queue: list[Task], bar: Progress) -> None:
        """The progress line's ETA, per kind of shard (`eta_by_kind`)."""
        now = time.monotonic()
        running = [(shard_kind_split(s.task.name)[0], now - s.since) for s in self.slots
                   if s.task is not None and s.starting is None]
        queued = collections.Counter(shard_kind_split(t.name)[0] for t in queue)
        queued.update(shard_kind_split(s.task.name)[0] for s in self.slots if s.task is not None and s.starting is not None)
        bar.set_eta(eta_by_kind(self.times, queued, running, len(self.slots)))

    def _name_stragglers(self, bar: Progress) -> None:
        """The progress line names the shards running late (the three latest, and how many more)."""
        now = time.monotonic()
        late = sorted((now - s.since, s.task.name) for s in self.slots
                      if s.task is not None and s.starting is None and self.deadline.straggling(now - s.since))
        if not late:
            bar.fields.pop("stragglers", None)
            return
        bar.set(stragglers=" ".join(f"{name} {seconds:.0f}s" for seconds, name in reversed(late[-3:]))
                + (f" (+{len(late) - 3})" if len(late) > 3 else ""))

    def _shutdown(self) -> None:
        """Kill every worker at once (an idle one may be stopped or stuck): nothing is left to wait for."""
        import ray

        for slot in self.slots:
            self.loads.append(slot.loads)
            with contextlib.suppress(Exception):
                ray.kill(slot.actor, no_restart=True)
        self.slots = []


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

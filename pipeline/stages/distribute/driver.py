"""The driver's loop: every worker busy with one shard at a time, deadlines, bounded retries and
restarts, a pool that follows the cluster's nodes; and what a run did (`GenerateSummary`)."""
from __future__ import annotations

import collections
import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, replace

from ...config import GenerateConfig
from ...contract.errors import JobFailed, first_line
from ...contract.layout import shard_kind_split
from ...contract.progress import Progress
from .cluster import describe, placeable


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

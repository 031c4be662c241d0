"""The pool's worker process: `ShardActor`, one teacher and a `ShardWorker` per release of the job,
one planned shard per call (the driver wraps it in `ray.remote`)."""
from __future__ import annotations

import os
import socket

from ...config import JobConfig
from ...contract.errors import short_error
from ...contract.layout import shard_kind_split
from ..plan import read_plan


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
        from .. import worker

        return {"node_id": self.node, "host": socket.gethostname(), "pid": os.getpid(), "error": self.error,
                "teacher_loads": worker.TEACHER_LOADS}

    def _worker(self, folder: int):
        from .. import worker

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
        from .. import worker

        plan = self._plan(folder)
        stats = self._worker(folder).run_shard(name, plan.rows(name), self.folders[folder][3])
        # the per-sample records are for the release step (it reads them from storage); keep replies small
        return {**{k: v for k, v in stats.items() if k != "samples"}, "teacher_loads": worker.TEACHER_LOADS}

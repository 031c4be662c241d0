"""`tsd run JOB --out DIR`: the generation stages of a job in order, each reused when done.

ingest (when the job names `data.source`) → probe → plan → generate → release → verify, through
the very functions the stage commands call, with one line per stage saying why it ran or was
reused: what `tsd status` says of the stage before it runs (`tools.status`), and what the stage
did. The first stage that fails ends the run with its one error line and the command that
continues (the same command: what is done is reused).
"""
from __future__ import annotations

import os
import shlex
from typing import Callable

from ..config import add_device_argument, add_job_arguments, load_job_args
from ..contract import storage
from ..contract.errors import JobFailed, UserError
from ..contract.files import mark_done
from ..stages.jobdir import family, marker
from .status import (DONE, VERIFY, StageState, generate_state, ingest_state, plan_state, probe_state, record_run,
                     release_state, verify_fingerprint, verify_state)


def _why(before: StageState) -> str:
    """Why a stage runs: what the status said of it."""
    return before.why if before.state != "stale" else f"stale: {before.why}"


def run_job(job, out, config: str, overrides: list[str], device: str = "auto", address: str | None = None,
            say: Callable[[str], None] = print) -> None:
    """Every generation stage of `job` into the job folder `out`; one line per stage through `say`.
    `config`, `overrides`: the manifest and --sets, recorded for `tsd status` and named in the
    command that continues after a failure."""
    from ..stages.distribute import generate_stage, summary_text
    from ..stages.plan import plan_stage
    from ..stages.release import release_stage

    out = storage.location(out)
    storage.make_folder(out)
    record_run(out, config, overrides)
    again = shlex.join(["tsd", "run", config, "--out", str(out), *(a for s in overrides for a in ("--set", s))])

    def stage(name: str, work: Callable[[], str]) -> None:
        try:
            say(f"{name}: {work()}")
        except (UserError, JobFailed) as e:
            raise type(e)(f"{name}: {' '.join(str(e).split())}; continue with: {again}") from None

    def ingest() -> str:
        before = ingest_state(job)
        if before.state == DONE:
            return f"reused ({before.why})"
        from ..sources.ingest import ingest as run_ingest

        r = run_ingest(job.data.source, storage.parent(job.data.index))
        return (f"ran ({_why(before)}): kept {r.kept}, rejected {r.rejected}; {len(r.classes)} classes; "
                f"train {r.splits['train']}, val {r.splits['val']}")

    def probe() -> str:
        from ..stages.probe import probe_stage, teacher_line

        before = probe_state(job, out)
        metrics, reused = probe_stage(job, out, device)
        if reused:
            return f"reused ({before.why})"
        return f"ran ({_why(before)}): {teacher_line(metrics)}"

    def plan() -> str:
        before = plan_state(job, out)
        planned, reused = plan_stage(job, out)
        shards = f"{len(planned.shard_names())} shards"
        return f"reused ({before.why}; {shards})" if reused else f"ran ({_why(before)}): {shards}"

    def generate() -> str:
        before = generate_state(job, out, probe_state(job, out), plan_state(job, out))
        s = generate_stage(job, out, address=address, device=device)
        if s.done == 0:
            return f"reused ({s.skipped} shards, {before.why})"
        return summary_text(s)

    def release() -> str:
        before = release_state(job, out, generate_state(job, out, probe_state(job, out), plan_state(job, out)))
        if before.state == DONE:
            return f"reused ({before.why}, {before.counts})"
        r = release_stage(job, out)
        counts = ", ".join(f"{k} {v}" for k, v in r.counts.items())
        return f"ran ({_why(before)}): {counts}; {r.shards} shards, {r.failed_samples} failed samples"

    def verify() -> str:
        from .verify import verify_release

        before = verify_state(job, out, StageState("release", DONE, ""))
        if before.state == DONE:
            return f"reused ({before.why})"
        roots = [f.root for f in family(job, out)]
        problems = [(root, what, why) for root in roots for what, why in verify_release(root)]
        if problems:
            root, what, why = problems[0]
            raise JobFailed(f"{len(problems)} problem(s), first: {root}: {what}: {why}")
        mark_done(marker(out, VERIFY), verify_fingerprint(job, out))
        return f"ran ({_why(before)}): OK" + (f" ({len(roots)} releases)" if len(roots) > 1 else "")

    for name, work in (("ingest", ingest), ("probe", probe), ("plan", plan), ("generate", generate),
                       ("release", release), ("verify", verify)):
        stage(name, work)


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    add_job_arguments(p)
    add_device_argument(p)
    p.add_argument("--address", default=None, help="Ray cluster address for generate (default: a local cluster, "
                                                   "or RAY_ADDRESS)")


def run(args) -> int:
    job = load_job_args(args)
    run_job(job, args.out, args.config, args.set, args.device, args.address or os.environ.get("RAY_ADDRESS"))
    print(f"run: {args.out}: every stage done (`tsd status {args.out}` shows them)")
    return 0

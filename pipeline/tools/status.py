"""`tsd status DIR`: each generation stage of a job folder as done, stale (and what changed) or to do.

It asks the stages' own records and loads no model and no Ray: the probe's and the plan's markers
(`contract.files`: the fingerprint of their inputs, and each input's, so a stale marker names what
changed), each shard's recorded maker (`contract.shards.stale_reason` against `JobFolder.makers`),
the manifest against the finished shards, and the verify marker `tsd run` writes. It hashes what the
stages hash (the index, the teacher and generator weights), which is the only slow part for large
weights. A stage after a stale or missing one is stale (or to do) too: it will be redone.

The job is the one `tsd run` recorded in DIR/work/run.json (its manifest and --sets), read anew, so
an edited manifest shows here; `--job` names another.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

from ..config import JobConfig, load_job
from ..contract import storage
from ..contract.configlib import parse_overrides
from ..contract.errors import UserError
from ..contract.files import changed_inputs, done, read_json
from ..contract.ids import fingerprint
from ..contract.layout import HEAD_FILE, MANIFEST
from ..contract.shards import finished_shards
from ..models.teacher_files import weights_sha256
from ..sources.index import index_origin
from ..stages.jobdir import family, input_fingerprints, marker, probe_fingerprint, probe_inputs, work_dir
from ..stages.plan import plan_inputs
from ..stages.planfile import read_plan

RUN_RECORD = "run.json"        # DIR/work/run.json: the job manifest and --sets of the last `tsd run`
VERIFY = "verify"              # DIR/work/verify.done.json: the manifests `tsd run` found intact
STAGES = ("ingest", "probe", "plan", "generate", "release", "verify")
DONE, STALE, TODO = "done", "stale", "to do"


@dataclass(frozen=True)
class StageState:
    """One stage of a job folder: `state` done | stale | to do, `why` (what was checked, or what
    changed), `counts` (e.g. '10/12 shards'), empty when it has none."""
    stage: str
    state: str
    why: str
    counts: str = ""

    def line(self) -> str:
        counts = f", {self.counts}" if self.counts else ""
        return f"{self.stage:<9}{self.state:<7}{self.why}{counts}"


# -- where the job is recorded --------------------------------------------------------------------
def record_run(out, config: str, overrides: list[str]) -> None:
    """What `tsd run` was given, so that `tsd status DIR` reads the same job (its file read anew)."""
    from ..contract.files import write_if_changed, json_bytes

    write_if_changed(storage.join(work_dir(out), RUN_RECORD),
                     json_bytes({"config": storage.absolute(config), "set": list(overrides)}))


def recorded_job(out, config: str | None = None, overrides: list[str] = ()) -> JobConfig:
    """The job of folder `out`: `config` with `overrides` when given, else what `tsd run` recorded."""
    if config is None:
        record = read_json(storage.join(work_dir(out), RUN_RECORD))
        if not isinstance(record, dict) or "config" not in record:
            raise UserError(f"{out}: no job recorded (DIR/work/{RUN_RECORD}: made without `tsd run`); "
                            f"name it: tsd status {out} --job JOB")
        config, overrides = record["config"], [*record.get("set", []), *overrides]
    return load_job(config, parse_overrides(list(overrides)))


# -- each stage ------------------------------------------------------------------------------------
def ingest_state(job: JobConfig) -> StageState:
    data = job.data
    if data.source is None:
        return StageState("ingest", DONE, f"data.index given ({data.index}; the job names no data.source)")
    if not storage.exists(data.index):
        return StageState("ingest", TODO, f"no index of {data.source} yet")
    made_from, _ = index_origin(data.index)
    if made_from != storage.absolute(data.source):
        return StageState("ingest", STALE, f"{data.index} holds the index of {made_from}, not of data.source")
    return StageState("ingest", DONE, f"{data.index} is the index of data.source")


def _changed(marker_path, named: dict) -> str:
    changed = changed_inputs(marker_path, named)
    if changed:
        return "changed: " + ", ".join(changed)
    return "its inputs changed (a marker from before markers named them)" if changed is None \
        else "its output is missing"


def probe_state(job: JobConfig, out) -> StageState:
    inputs = probe_inputs(job)
    path = marker(out, "probe")
    if done(path, probe_fingerprint(inputs), [storage.join(out, HEAD_FILE)]) is not None:
        return StageState("probe", DONE, "head matches config and index")
    if read_json(path) is None:
        return StageState("probe", TODO, "not run yet")
    return StageState("probe", STALE, _changed(path, input_fingerprints(inputs)))


def plan_state(job: JobConfig, out) -> StageState:
    inputs = plan_inputs(job)
    job_fingerprint = fingerprint(inputs)
    folders = family(job, out)
    releases = f" ({len(folders)} releases)" if len(folders) > 1 else ""
    for folder in folders:
        path = folder.marker("plan")
        if done(path, folder.plan_fingerprint(job_fingerprint), [folder.plan_path]) is not None:
            continue
        if read_json(path) is None:
            return StageState("plan", TODO, f"not run yet in {folder.root}" if folder.is_member else "not run yet")
        where = f"{folder.root}: " if folder.is_member else ""
        return StageState("plan", STALE, where + _changed(path, folder.plan_input_fingerprints(inputs)))
    return StageState("plan", DONE, "plan matches config and index" + releases)


def generate_state(job: JobConfig, out, probe: StageState, plan: StageState) -> StageState:
    """The shards of every release of the job: made by what makes them now, stale, or missing."""
    from ..stages.distribute.pending import pending_shards

    if plan.state != DONE:
        return StageState("generate", TODO if plan.state == TODO else STALE,
                          "waits for the plan" if plan.state == TODO else "the plan is stale: its shards are redone")
    if not storage.isfile(storage.join(out, HEAD_FILE)):
        return StageState("generate", TODO, "waits for the probe")
    teacher_weights = weights_sha256(job.teacher)
    planned = made = 0
    reasons: collections.Counter = collections.Counter()
    for folder in family(job, out):
        plan = read_plan(folder.plan_path)
        names = plan.shard_names()
        head = storage.join(folder.root, HEAD_FILE) if storage.isfile(storage.join(folder.root, HEAD_FILE)) else None
        if head is None:   # a member before generate copies the head into it: nothing made there yet
            planned += len(names)
            continue
        pending, stale = pending_shards(folder.root, names, folder.makers(plan.fingerprint, teacher_weights))
        planned += len(names)
        made += len(names) - len(pending)
        reasons.update(stale.values())
    counts = f"{made}/{planned} shards done"
    if reasons:
        counts += f", {sum(reasons.values())} stale"
    if probe.state != DONE and made:
        return StageState("generate", STALE, f"the probe is {probe.state}: the {made} shard(s) labelled by the "
                                             "current head are redone with the new one", counts)
    if reasons:
        return StageState("generate", STALE, "; ".join(f"{why}: {n}" for why, n in sorted(reasons.items())), counts)
    if made < planned:
        return StageState("generate", TODO, f"{planned - made} shard(s) to make", counts)
    return StageState("generate", DONE, "every shard made by the current head, weights and plan", counts)


def release_state(job: JobConfig, out, generate: StageState) -> StageState:
    """Each release's manifest against its finished shards (their sha256) and the current plan and head."""
    folders = family(job, out)
    manifests = [read_json(storage.join(f.root, MANIFEST)) for f in folders]
    if all(m is None for m in manifests):
        return StageState("release", TODO, "no manifest yet")
    if generate.state != DONE:
        return StageState("release", STALE, "shards are still to make: the manifest is rewritten after them")
    for folder, manifest in zip(folders, manifests):
        if manifest is None:
            return StageState("release", TODO, f"no manifest yet in {folder.root}")
        plan = read_plan(folder.plan_path)
        stats = finished_shards(folder.root, plan.shard_names())
        listed = {s["name"]: s["sha256"] for s in manifest.get("shards", [])}
        differ = sorted(n for n in set(listed) | set(stats) if listed.get(n) != (stats.get(n) or {}).get("sha256"))
        head = storage.sha256(storage.join(folder.root, HEAD_FILE))
        if manifest.get("plan_fingerprint") != plan.fingerprint:
            return StageState("release", STALE, f"{folder.root}: the manifest names another plan")
        if (manifest.get("teacher") or {}).get("head_sha256") != head:
            return StageState("release", STALE, f"{folder.root}: the manifest names another teacher head")
        if differ:
            return StageState("release", STALE, f"{folder.root}: {len(differ)} shard(s) differ from the manifest "
                                                f"(first: {differ[0]})")
    shards = sum(len(m["shards"]) for m in manifests)
    return StageState("release", DONE, "manifest matches the shards", f"{shards} shards")


def verify_fingerprint(job: JobConfig, out) -> str:
    """What the verify marker records: the sha256 of every release's manifest of the job."""
    return fingerprint([storage.sha256(storage.join(f.root, MANIFEST)) for f in family(job, out)])


def verify_state(job: JobConfig, out, release: StageState) -> StageState:
    path = marker(out, VERIFY)
    if release.state != DONE:
        return StageState("verify", TODO if read_json(path) is None else STALE, "waits for the release")
    if done(path, verify_fingerprint(job, out)) is not None:
        return StageState("verify", DONE, "OK for this manifest")
    if read_json(path) is None:
        return StageState("verify", TODO, "not verified by `tsd run` yet")
    return StageState("verify", STALE, "the release changed since it was verified")


def job_status(job: JobConfig, out) -> list[StageState]:
    """Every stage of the job folder `out`, in order."""
    out = storage.location(out)
    ingest = ingest_state(job)
    if ingest.state != DONE:   # nothing after it can be judged without the index
        return [ingest] + [StageState(s, TODO, "waits for ingest") for s in STAGES[1:]]
    probe, plan = probe_state(job, out), plan_state(job, out)
    generate = generate_state(job, out, probe, plan)
    release = release_state(job, out, generate)
    return [ingest, probe, plan, generate, release, verify_state(job, out, release)]


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("out", metavar="DIR", help="a job folder (the --out of `tsd run`)")
    p.add_argument("--job", default=None, help="the job manifest (default: the one `tsd run` recorded in DIR)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, as given to `tsd run` (repeatable)")


def run(args) -> int:
    out = storage.location(args.out)
    if not storage.exists(out):
        raise UserError(f"{args.out}: no such job folder")
    states = job_status(recorded_job(out, args.job, args.set), out)
    print(f"status: {args.out}")
    for s in states:
        print("  " + s.line())
    todo = [s.stage for s in states if s.state != DONE]
    print(f"status: {'every stage done' if not todo else 'to run: ' + ', '.join(todo)}")
    return 0

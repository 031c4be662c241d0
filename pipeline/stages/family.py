"""Several generators for one task under one teacher (`generator.kinds`): one job, a family of releases.

The job folder OUT is the release of `generator.kind`'s mixes, with the real shards and the teacher
head. Each other kind k of `generator.kinds` gets a release of its own, OUT/generators/k/: its mix
shards only, planned exactly as OUT's mixes (the same parent pairs, mixing weights, seeds and
recorded views: only the generator differs) and labelled by the same teacher head (copied into
its teacher/ folder: the same sha256). Each manifest's `family` maps every kind to its release and
names the release holding the real shards, as paths relative to itself. A student trains on OUT plus
any members, choosing mixes by `data.generators`; `tsd compare` makes a row of each.

Every member is an ordinary job folder (its own work/ with the plan and the stage markers), so each
stage reuses finished work member by member. The stages ask this module who the members are:
plan (`plan.plan_stage`), generate (`distribute.generate_stage`, one Ray session for all),
release (`release.release_stage`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import JobConfig
from ..contract import storage
from ..contract.errors import UserError
from ..contract.files import write_if_changed
from ..contract.generators import DIFFUSION_KINDS
from ..contract.ids import fingerprint
from ..contract.layout import HEAD_FILE, PROBE_METRICS

GENERATORS_DIR = "generators"


@dataclass(frozen=True)
class Member:
    """A release of the family other than the job folder: one more generator's mixes."""
    kind: str
    job: JobConfig     # the job with generator.kind = kind (and generator.kinds unset)
    root: str          # OUT/generators/<kind>: a local path or a URL, as OUT


def member_job(job: JobConfig, kind: str) -> JobConfig:
    g = job.generator
    path = getattr(g, g.folder_key(kind)) if kind in DIFFUSION_KINDS else None
    generator = replace(g, kind=kind, kinds=None, path=path, prompted_path=None)
    return replace(job, generator=generator, release=replace(job.release, name=f"{job.release.name}-{kind}"))


def members(job: JobConfig, out) -> list[Member]:
    """The family's other releases, in `generator.kinds` order (none without `generator.kinds`)."""
    g = job.generator
    if g is None or not g.kinds:
        return []
    return [Member(k, member_job(job, k), storage.join(out, GENERATORS_DIR, k)) for k in g.kinds if k != g.kind]


def member_plan_fingerprint(member: Member, job_fingerprint: str) -> str:
    """A member's plan: the job's mixes, for the member's generator."""
    return fingerprint([job_fingerprint, "mixes only", member.kind])


def share_teacher(out, member: Member) -> None:
    """The job folder's teacher head and probe metrics, copied into the member (when they changed)."""
    for name in (HEAD_FILE, PROBE_METRICS):
        source = storage.join(out, name)
        try:
            data = storage.read_bytes(source)
        except FileNotFoundError:
            raise UserError(f"{source}: no teacher head (run `tsd probe` first)") from None
        write_if_changed(storage.join(member.root, name), data)


def family_record(job: JobConfig, kind: str | None = None) -> dict | None:
    """The manifest's `family` of the job folder (kind None) or of member `kind`: every kind's
    release and the release with the real shards, relative to that release; None without kinds."""
    g = job.generator
    if g is None or not g.kinds:
        return None
    if kind is None:  # the job folder: its members below it
        where = {k: "." if k == g.kind else f"{GENERATORS_DIR}/{k}" for k in g.kinds}
        real = "."
    else:             # a member, OUT/generators/<kind>: the job folder two levels up, its siblings beside it
        where = {k: "." if k == kind else "../.." if k == g.kind else f"../{k}" for k in g.kinds}
        real = "../.."
    return {"real": real, "generators": where,
            "teacher": "one teacher head for every release of the family (the same head_sha256)"}

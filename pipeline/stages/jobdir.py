"""A job folder, as one object: its paths, stage markers, plan and teacher head, and the family of
releases it holds when the job names several generators.

A job folder is the release itself (manifest.json, index.parquet, README.md, teacher/, real/, mix/)
plus `work/` for what only the pipeline needs: the plan, and a marker per finished stage
(`contract.files.reuse`: a stage is redone only when its inputs changed). It is a local path or an
fsspec URL (`s3://bucket/releases/cub200`): every path here is built with `contract.storage.join`,
never with `pathlib`, which would fold 's3://' into 's3:/'.

Several generators for one task under one teacher (`generator.kinds`) make one job a family of
releases. The job folder OUT is the release of `generator.kind`'s mixes, with the real shards and
the teacher head. Each other kind k gets a release of its own, OUT/generators/k/ (a *member*): its
mix shards only, planned exactly as OUT's mixes (the same parent pairs, mixing weights, seeds and
recorded views: only the generator differs) and labelled by the same teacher head (copied into its
teacher/ folder: the same sha256). Each manifest's `family` maps every kind to its release and names
the release holding the real shards, as paths relative to itself. Every member is an ordinary job
folder (its own work/ with the plan and the stage markers), so plan and release handle one
`JobFolder` at a time, and generate feeds the shards of all of them to one pool of workers.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..config import JobConfig
from ..contract import storage
from ..contract.configlib import to_dict
from ..contract.errors import UserError
from ..contract.files import write_if_changed
from ..contract.ids import fingerprint, sha256_file
from ..contract.layout import HEAD_FILE, PROBE_METRICS
from ..contract.generators import DIFFUSION_KINDS
from ..models.teacher_files import weights_sha256
from ..sources.index import index_sha256

WORK = "work"
GENERATORS_DIR = "generators"
PLAN_FILE = "plan.parquet"


def work_dir(out) -> str:
    return storage.join(out, WORK)


def plan_path(out) -> str:
    return storage.join(work_dir(out), PLAN_FILE)


def marker(out, stage: str) -> str:
    return storage.join(work_dir(out), f"{stage}.done.json")


@dataclass(frozen=True)
class JobFolder:
    """One release of a job: the job folder itself (kind None) or a member, OUT/generators/<kind>."""
    job: JobConfig     # for a member: the job with generator.kind = kind (and generator.kinds unset)
    root: str          # a local path or a URL
    kind: str | None = None

    @property
    def is_member(self) -> bool:
        return self.kind is not None

    @property
    def plan_path(self) -> str:
        return plan_path(self.root)

    @property
    def head(self) -> str:
        return storage.join(self.root, HEAD_FILE)

    def marker(self, stage: str) -> str:
        return marker(self.root, stage)

    def makers(self, plan_fingerprint: str, teacher_weights=None) -> dict:
        """What makes this release's shards now: `contract.shards.shard_identity`'s arguments but the
        shard's name. `teacher_weights`: the teacher weights' sha256 when the caller hashed them
        already (once per job: they are GBs), else hashed here."""
        if not storage.exists(self.head):
            raise UserError(f"{self.head}: no teacher head (run `tsd probe` first)")
        return {"plan": plan_fingerprint, "head_sha256": storage.sha256(self.head),
                "teacher_weights": weights_sha256(self.job.teacher) if teacher_weights is None else teacher_weights,
                "generator_files": generator_files(self.job)}

    def plan_fingerprint(self, job_fingerprint: str) -> str:
        """A member's plan is the job's mixes, for the member's generator; the job folder's is the job's."""
        return job_fingerprint if self.kind is None else fingerprint([job_fingerprint, "mixes only", self.kind])

    def plan_input_fingerprints(self, job_inputs: dict) -> dict:
        """{name: fingerprint} of what this release's plan depends on (`stages.plan.plan_inputs` of
        the job), recorded in its plan marker; a member's plan also depends on its generator kind."""
        named = input_fingerprints(job_inputs)
        return named if self.kind is None else {**named, "generator kind": fingerprint(self.kind)}

    def family_record(self, job: JobConfig) -> dict | None:
        """The manifest's `family` of this release (`job`: the whole job): every kind's release and
        the release with the real shards, relative to this one; None without generator.kinds."""
        g = job.generator
        if g is None or not g.kinds:
            return None
        if self.kind is None:  # the job folder: its members below it
            where = {k: "." if k == g.kind else f"{GENERATORS_DIR}/{k}" for k in g.kinds}
            real = "."
        else:                  # a member: the job folder two levels up, its siblings beside it
            where = {k: "." if k == self.kind else "../.." if k == g.kind else f"../{k}" for k in g.kinds}
            real = "../.."
        return {"real": real, "generators": where,
                "teacher": "one teacher head for every release of the family (the same head_sha256)"}


def probe_inputs(job: JobConfig) -> dict:
    """What the teacher head depends on, by name (`tsd status` names the ones that changed); the
    probe's fingerprint is that of the values, in this order."""
    return {"teacher.*": to_dict(job.teacher, paths=False), "probe.*": to_dict(job.probe),
            "data.*": to_dict(job.data, paths=False), "views.*": to_dict(job.views), "seed": job.seed,
            "data.index (its sha256)": index_sha256(job.data.index),
            "teacher.weights (their sha256)": weights_sha256(job.teacher)}


def probe_fingerprint(inputs: dict) -> str:
    """The probe marker's fingerprint of `probe_inputs(job)`."""
    return fingerprint(list(inputs.values()))


def input_fingerprints(inputs: dict) -> dict:
    """{name: fingerprint} of each named input: what a stage marker records beside its fingerprint."""
    return {name: fingerprint(value) for name, value in inputs.items()}


def generator_files(job: JobConfig) -> dict:
    """{file: sha256} of the generator's weights and configs (the manifest's generator.files); {} for
    a generator without a folder (the pixel mixes)."""
    g = job.generator
    if g is None or not g.path:
        return {}
    root = Path(g.path)
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".safetensors", ".bin", ".ckpt", ".json")}


def member_job(job: JobConfig, kind: str) -> JobConfig:
    g = job.generator
    path = getattr(g, g.folder_key(kind)) if kind in DIFFUSION_KINDS else None
    generator = replace(g, kind=kind, kinds=None, path=path, prompted_path=None)
    return replace(job, generator=generator, release=replace(job.release, name=f"{job.release.name}-{kind}"))


def members(job: JobConfig, out) -> list[JobFolder]:
    """The family's other releases, in `generator.kinds` order (none without `generator.kinds`)."""
    g = job.generator
    if g is None or not g.kinds:
        return []
    return [JobFolder(member_job(job, k), storage.join(out, GENERATORS_DIR, k), k) for k in g.kinds if k != g.kind]


def family(job: JobConfig, out) -> list[JobFolder]:
    """Every release of the job: the job folder first, then its members."""
    return [JobFolder(job, storage.location(out)), *members(job, storage.location(out))]


def share_teacher(out, member: JobFolder) -> None:
    """The job folder's teacher head and probe metrics, copied into the member (when they changed)."""
    for name in (HEAD_FILE, PROBE_METRICS):
        source = storage.join(out, name)
        try:
            data = storage.read_bytes(source)
        except FileNotFoundError:
            raise UserError(f"{source}: no teacher head (run `tsd probe` first)") from None
        write_if_changed(storage.join(member.root, name), data)

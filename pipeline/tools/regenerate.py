"""`tsd regenerate RELEASE --uid UID`: rebuild samples from the release alone and compare them.

The release holds everything needed: the resolved job config (in manifest.json), the sample's row
(index.parquet: split, kind, label, parents, mixing weight, seed) and the teacher head. The source
images come from the ingest index the config names. The planned row is rebuilt from those (stored
size and views follow from the seed and the config, as in `plan`), then the real shard worker makes
the sample, and each member is compared with the stored one: identical bytes (what a rerun on the
same hardware and software gives), or the largest pixel and logit differences (what another CPU or GPU
model gives: its float kernels differ in the last bits).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import JobConfig, add_device_argument
from ..contract import storage
from ..contract.configlib import ConfigError, build
from ..contract.errors import UserError
from ..contract.ids import derive_seed
from ..contract.images import decode_image
from ..contract.layout import HEAD_FILE, INDEX, KINDS, MANIFEST
from ..contract.masks import decode_mask
from ..contract.samples import (DENSE_MEMBERS, M_FEATURES, M_JSON, M_LOGITS, M_MASK, M_TOPK_IDX, M_TOPK_LOGITS,
                                SampleMeta, decode_dense, dense_logits, image_member, npy_load)
from ..stages.draws import make_row
from ..stages.planfile import PlanRow
from .reader import ReleaseReader


@dataclass
class Comparison:
    uid: str
    kind: str
    shard: str
    status: str = "identical"          # identical | within tolerance | differs | failed
    identical: list = field(default_factory=list)   # members with identical bytes
    problems: list = field(default_factory=list)    # what differs beyond the tolerances
    notes: list = field(default_factory=list)       # differences within the tolerances

    def line(self) -> str:
        where = f"{self.uid}  {self.kind:<4}  {self.shard}"
        if self.status == "identical":
            return f"{where}: identical ({', '.join(self.identical)})"
        detail = "; ".join(self.problems + self.notes)
        return f"{where}: {self.status}: {detail}"


def job_from_manifest(root, manifest: dict) -> JobConfig:
    """The release's resolved job config, validated like a manifest (its files must exist here)."""
    try:
        return build(JobConfig, manifest["config"], "config")
    except ConfigError as e:
        raise UserError(f"{storage.join(root, MANIFEST)}: {e}") from None


def expected_plan_fingerprint(job: JobConfig, manifest: dict) -> str:
    """The plan fingerprint the release's job makes now. A member of a generator family
    (OUT/generators/<kind>, its manifest's family naming the real shards' release elsewhere) has its
    own (`JobFolder.plan_fingerprint`), derived from the whole job's: the member's job with the
    family's generator kinds and the job folder's kind (what a prompted pool's plan depends on)."""
    from ..stages.jobdir import JobFolder
    from ..stages.plan import plan_fingerprint

    family = manifest.get("family") or {}
    if family.get("real", ".") == "." or job.generator is None:
        return plan_fingerprint(job)
    where = family.get("generators") or {}
    kind = next((k for k, w in where.items() if w == family["real"]), job.generator.kind)
    whole = replace(job, generator=replace(job.generator, kind=kind, kinds=list(where)))
    return JobFolder(job, "", job.generator.kind).plan_fingerprint(plan_fingerprint(whole))


def check_models(root, job: JobConfig, manifest: dict, need_generator: bool) -> None:
    """The weights on this machine must be the ones the release was made with."""
    from ..models.teacher_files import weights_identity
    from ..stages.release import generator_record

    recorded = manifest["teacher"]
    if weights_identity(job.teacher)["sha256"] != recorded["weights"]["sha256"]:
        raise UserError(f"{job.teacher.weights}: teacher weights differ from the release's "
                              f"(sha256 {recorded['weights']['sha256']})")
    if storage.sha256(storage.join(root, HEAD_FILE)) != recorded["head_sha256"]:
        raise UserError(f"{storage.join(root, HEAD_FILE)}: teacher head differs from the manifest's")
    if need_generator:
        have = generator_record(job)["files"]
        for name, digest in manifest["generator"]["files"].items():
            if have.get(name) != digest:
                raise UserError(f"{Path(job.generator.path) / name}: generator file differs from "
                                      f"the release's (or is missing)")


def planned_row(job: JobConfig, sample: dict, sources: dict[str, dict]) -> PlanRow:
    """The plan's row for a released sample (an index row), rebuilt as `plan` builds it."""
    def source(uid: str, role: str) -> dict:
        if uid not in sources:
            raise UserError(f"{job.data.index}: no source image for {role} {uid} (index changed?)")
        return sources[uid]

    uid = sample["uid"]
    seed = derive_seed(job.seed, uid)
    if seed != sample["seed"]:
        raise UserError(f"{uid}: seed {sample['seed']} in the index, the config derives {seed}")
    parents = list(sample["parents"] or [])
    real = sample["kind"] == "real"
    return make_row(job, uid, sample["split"], sample["kind"], label=sample["label"], class_name=sample["class_name"],
                    source=source(uid, "sample") if real else None, parents=parents,
                    parent_paths=[] if real else [source(p, "parent")["path"] for p in parents],
                    weight=sample["weight"], shard=sample["shard"])


def rebuild(worker, rows: list[PlanRow]) -> dict[str, tuple]:
    """{uid: (members, failure)} made by the shard worker itself, one kind at a time (as in a shard)."""
    out = {}
    for kind in KINDS:
        batch = [r for r in rows if r.kind == kind]
        if batch:
            for made in worker.make_samples(batch):
                out[made.row.uid] = (made.members, made.failure)
    return out


def compare(row: PlanRow, stored: dict, rebuilt: dict, num_classes: int,
            pixel_tol: int = 0, logit_tol: float = 0.0) -> Comparison:
    """Member by member: identical bytes, or the largest differences against the tolerances."""
    result = Comparison(row.uid, row.kind, row.shard)
    for name in sorted(set(stored) ^ set(rebuilt)):
        result.problems.append(f"member {name} only in the {'stored' if name in stored else 'rebuilt'} sample")
    for name in sorted(set(stored) & set(rebuilt)):
        if stored[name] == rebuilt[name]:
            result.identical.append(name)
    image = image_member(stored)
    if image and image in rebuilt and image not in result.identical:
        a, b = decode_image(stored[image]), decode_image(rebuilt[image])
        if a.shape != b.shape:
            result.problems.append(f"{image} size {tuple(b.shape)} vs stored {tuple(a.shape)}")
        else:
            diff = int((a.int() - b.int()).abs().max())
            (result.notes if diff <= pixel_tol else result.problems).append(f"{image} max pixel diff {diff}")
    if M_JSON in stored and M_JSON in rebuilt and M_JSON not in result.identical:
        a, b = json.loads(stored[M_JSON]), json.loads(rebuilt[M_JSON])
        # topk_rest follows from the logits: compared there
        fields = sorted(k for k in set(a) | set(b) if k != "topk_rest" and a.get(k) != b.get(k))
        if fields:
            result.problems.append(f"json differs in {', '.join(fields)}")
    teacher = {M_LOGITS, M_TOPK_IDX, M_TOPK_LOGITS} & (set(stored) | set(rebuilt))
    if teacher - set(result.identical) and M_JSON in stored and M_JSON in rebuilt:
        a = dense_logits(stored, SampleMeta.from_json(stored[M_JSON]), num_classes, "stored")
        b = dense_logits(rebuilt, SampleMeta.from_json(rebuilt[M_JSON]), num_classes, "rebuilt")
        _max_diff(result, "logits", a, b, logit_tol)
    dense = set(DENSE_MEMBERS) & (set(stored) | set(rebuilt))
    if dense - set(result.identical):
        _max_diff(result, "dense logits", decode_dense(stored, num_classes, "stored"),
                  decode_dense(rebuilt, num_classes, "rebuilt"), logit_tol)
    if M_MASK in stored and M_MASK in rebuilt and M_MASK not in result.identical:
        # a mask follows from the source file alone (no float kernel): any difference is a problem
        a, b = decode_mask(stored[M_MASK]), decode_mask(rebuilt[M_MASK])
        result.problems.append(f"{M_MASK} size {tuple(b.shape)} vs stored {tuple(a.shape)}" if a.shape != b.shape
                               else f"{M_MASK} differs in {int((a != b).sum())} pixels")
    if M_FEATURES in stored and M_FEATURES in rebuilt and M_FEATURES not in result.identical:
        _max_diff(result, "features", npy_load(stored[M_FEATURES]), npy_load(rebuilt[M_FEATURES]),
                  logit_tol)
    if result.problems:
        result.status = "differs"
    elif result.notes:
        result.status = "within tolerance"
    return result


def _max_diff(result: Comparison, name: str, a: np.ndarray, b: np.ndarray, tol: float) -> None:
    if a.shape != b.shape:
        result.problems.append(f"{name} shape {b.shape} vs stored {a.shape}")
        return
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    (result.notes if diff <= tol else result.problems).append(f"{name} max diff {diff:.6g}")


def regenerate(root, uids: list[str], device: str = "auto", pixel_tol: int = 0,
               logit_tol: float = 0.0, warn=print) -> list[Comparison]:
    """Rebuild `uids` from the release at `root` and compare each with its stored sample."""
    from ..sources.index import read_source_index
    from ..stages.worker import ShardWorker

    release = ReleaseReader(root)
    root, manifest = release.root, release.manifest
    index = release.index_by_uid()
    unknown = [u for u in uids if u not in index]
    if unknown:
        raise UserError(f"{storage.join(root, INDEX)}: no sample {', '.join(unknown[:3])}"
                              f"{f' (and {len(unknown) - 3} more)' if len(unknown) > 3 else ''}")
    samples = [index[u] for u in dict.fromkeys(uids)]
    job = job_from_manifest(root, manifest)
    check_models(root, job, manifest, need_generator=any(s["kind"] == "mix" for s in samples))
    if expected_plan_fingerprint(job, manifest) != manifest.get("plan_fingerprint"):
        warn(f"warning: {job.data.index} or the plan settings changed since the release was made "
             "(plan fingerprint differs): rebuilt samples may differ")
    sources = {r["uid"]: r for r in read_source_index(job.data).rows}
    rows = [planned_row(job, s, sources) for s in samples]
    worker = ShardWorker(job, root, device=device)
    try:
        rebuilt = rebuild(worker, rows)
    finally:
        worker.close()
    stored = release.samples(samples)
    results = []
    for row in rows:
        members, failure = rebuilt[row.uid]
        if failure:
            results.append(Comparison(row.uid, row.kind, row.shard, "failed", problems=[failure]))
        else:
            results.append(compare(row, stored[row.uid], members, manifest["num_classes"], pixel_tol, logit_tol))
    return results


def add_arguments(p) -> None:
    p.add_argument("release", help="release folder or URL")
    p.add_argument("--uid", action="append", required=True, help="a sample's uid (repeatable)")
    add_device_argument(p)
    # Defaults of 0: a rebuild on the machine and software that made the release is byte-identical. On another
    # CPU or GPU, float kernels differ in the last bits (docs/FORMAT.md, "Seeds and determinism").
    p.add_argument("--pixel-tol", type=int, default=0,
                   help="largest pixel difference accepted, 0..255 (default 0: the same machine and software; "
                        "on another CPU or GPU generated pixels may differ by a few levels)")
    p.add_argument("--logit-tol", type=float, default=0.0,
                   help="largest teacher logit (and feature) difference accepted (default 0: the same machine and "
                        "software; on another CPU or GPU the teacher's logits may differ in their last bits)")


def run(args) -> int:
    """0 when every sample is identical or within the tolerances, 1 otherwise."""
    results = regenerate(args.release, args.uid, args.device, args.pixel_tol, args.logit_tol,
                         warn=lambda m: print(m, file=sys.stderr))
    for r in results:
        print(r.line())
    bad = [r for r in results if r.status in ("differs", "failed")]
    counts = {s: sum(r.status == s for r in results) for s in ("identical", "within tolerance", "differs", "failed")}
    print(f"regenerate: {len(results)} sample(s): " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 1 if bad else 0

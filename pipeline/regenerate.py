"""`tsd regenerate RELEASE --uid UID`: rebuild samples from the release alone and compare them.

The release holds everything needed: the resolved job config (in manifest.json), the sample's row
(index.parquet: split, kind, label, parents, mixing weight, seed) and the teacher head. The source
images come from the ingest index the config names. The planned row is rebuilt from those (stored
size and views follow from the seed and the config, as in `plan`), then the real shard worker makes
the sample, and each member is compared with the stored one: identical bytes (what a CPU rerun
gives), or the largest pixel and logit differences (what another GPU model gives).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import format as fmt
from .config import JobConfig
from .configlib import ConfigError, build
from .plan import geometry


class RegenerateError(ValueError):
    """The release cannot be regenerated as asked (unknown uid, changed weights, missing source)."""


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


def job_from_manifest(root: Path, manifest: dict) -> JobConfig:
    """The release's resolved job config, validated like a manifest (its files must exist here)."""
    try:
        return build(JobConfig, manifest["config"], "config")
    except ConfigError as e:
        raise RegenerateError(f"{root / fmt.MANIFEST}: {e}") from None


def check_models(root: Path, job: JobConfig, manifest: dict, need_generator: bool) -> None:
    """The weights on this machine must be the ones the release was made with."""
    from .models.teacher import weights_identity
    from .release import generator_record

    recorded = manifest["teacher"]
    if weights_identity(job.teacher)["sha256"] != recorded["weights"]["sha256"]:
        raise RegenerateError(f"{job.teacher.weights}: teacher weights differ from the release's "
                              f"(sha256 {recorded['weights']['sha256']})")
    if fmt.sha256_file(root / fmt.HEAD_FILE) != recorded["head_sha256"]:
        raise RegenerateError(f"{root / fmt.HEAD_FILE}: teacher head differs from the manifest's")
    if need_generator:
        have = generator_record(job)["files"]
        for name, digest in manifest["generator"]["files"].items():
            if have.get(name) != digest:
                raise RegenerateError(f"{Path(job.generator.path) / name}: generator file differs from "
                                      f"the release's (or is missing)")


def read_index(root: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    return {r["uid"]: r for r in pq.read_table(root / fmt.INDEX).to_pylist()}


def planned_row(job: JobConfig, sample: dict, sources: dict[str, dict]) -> dict:
    """The plan's row for a released sample, rebuilt as `plan` builds it."""
    def source(uid: str, role: str) -> dict:
        if uid not in sources:
            raise RegenerateError(f"{job.data.index}: no source image for {role} {uid} (index changed?)")
        return sources[uid]

    uid = sample["uid"]
    seed = fmt.derive_seed(job.seed, uid)
    if seed != sample["seed"]:
        raise RegenerateError(f"{uid}: seed {sample['seed']} in the index, the config derives {seed}")
    if sample["kind"] == "real":
        src = source(uid, "sample")
        path, parent_paths = src["path"], []
    else:
        src, path = None, None
        parent_paths = [source(p, "parent")["path"] for p in sample["parents"]]
    width, height, views = geometry(job, sample["kind"], sample["split"], seed, src)
    return dict(uid=uid, split=sample["split"], kind=sample["kind"], shard=sample["shard"], label=sample["label"],
                class_name=sample["class_name"], path=path, parents=list(sample["parents"] or []),
                parent_paths=parent_paths, weight=sample["weight"], seed=seed, width=width, height=height,
                views=views)


def stored_samples(root: Path, rows: list[dict]) -> dict[str, dict]:
    """{uid: members} of the requested samples, each shard read once."""
    wanted: dict[str, set] = {}
    for row in rows:
        wanted.setdefault(row["shard"], set()).add(row["uid"])
    out = {}
    for shard, uids in wanted.items():
        path = root / f"{shard}{fmt.SHARD_SUFFIX}"
        with open(path, "rb") as f:
            for key, members in fmt.read_shard(f, str(path)):
                if key in uids:
                    out[key] = members
    return out


def rebuild(worker, rows: list[dict]) -> dict[str, tuple]:
    """{uid: (members, failure)} made by the shard worker itself, one kind at a time (as in a shard)."""
    out = {}
    for kind in fmt.KINDS:
        batch = [r for r in rows if r["kind"] == kind]
        if batch:
            for row, members, _record, failure in worker.make_samples(batch):
                out[row["uid"]] = (members, failure)
    return out


def compare(row: dict, stored: dict, rebuilt: dict, num_classes: int,
            pixel_tol: int = 0, logit_tol: float = 0.0) -> Comparison:
    """Member by member: identical bytes, or the largest differences against the tolerances."""
    result = Comparison(row["uid"], row["kind"], row["shard"])
    for name in sorted(set(stored) ^ set(rebuilt)):
        result.problems.append(f"member {name} only in the {'stored' if name in stored else 'rebuilt'} sample")
    for name in sorted(set(stored) & set(rebuilt)):
        if stored[name] == rebuilt[name]:
            result.identical.append(name)
    image = fmt.image_member(stored)
    if image and image in rebuilt and image not in result.identical:
        a, b = fmt.decode_image(stored[image]), fmt.decode_image(rebuilt[image])
        if a.shape != b.shape:
            result.problems.append(f"{image} size {tuple(b.shape)} vs stored {tuple(a.shape)}")
        else:
            diff = int((a.int() - b.int()).abs().max())
            (result.notes if diff <= pixel_tol else result.problems).append(f"{image} max pixel diff {diff}")
    if fmt.M_JSON in stored and fmt.M_JSON in rebuilt and fmt.M_JSON not in result.identical:
        a, b = json.loads(stored[fmt.M_JSON]), json.loads(rebuilt[fmt.M_JSON])
        # topk_rest follows from the logits: compared there
        fields = sorted(k for k in set(a) | set(b) if k != "topk_rest" and a.get(k) != b.get(k))
        if fields:
            result.problems.append(f"json differs in {', '.join(fields)}")
    teacher = {fmt.M_LOGITS, fmt.M_TOPK_IDX, fmt.M_TOPK_LOGITS} & (set(stored) | set(rebuilt))
    if teacher - set(result.identical) and fmt.M_JSON in stored and fmt.M_JSON in rebuilt:
        a = fmt.dense_logits(stored, fmt.SampleMeta.from_json(stored[fmt.M_JSON]), num_classes, "stored")
        b = fmt.dense_logits(rebuilt, fmt.SampleMeta.from_json(rebuilt[fmt.M_JSON]), num_classes, "rebuilt")
        _max_diff(result, "logits", a, b, logit_tol)
    if fmt.M_FEATURES in stored and fmt.M_FEATURES in rebuilt and fmt.M_FEATURES not in result.identical:
        _max_diff(result, "features", fmt.npy_load(stored[fmt.M_FEATURES]), fmt.npy_load(rebuilt[fmt.M_FEATURES]),
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


def regenerate(root: str | Path, uids: list[str], device: str = "auto", pixel_tol: int = 0,
               logit_tol: float = 0.0, warn=print) -> list[Comparison]:
    """Rebuild `uids` from the release at `root` and compare each with its stored sample."""
    from .plan import plan_fingerprint
    from .source_index import read_source_index
    from .verify import load_manifest
    from .worker import ShardWorker

    root = Path(root)
    manifest = load_manifest(root)
    index = read_index(root)
    unknown = [u for u in uids if u not in index]
    if unknown:
        raise RegenerateError(f"{root / fmt.INDEX}: no sample {', '.join(unknown[:3])}"
                              f"{f' (and {len(unknown) - 3} more)' if len(unknown) > 3 else ''}")
    samples = [index[u] for u in dict.fromkeys(uids)]
    job = job_from_manifest(root, manifest)
    check_models(root, job, manifest, need_generator=any(s["kind"] == "mix" for s in samples))
    if plan_fingerprint(job) != manifest.get("plan_fingerprint"):
        warn(f"warning: {job.data.index} or the plan settings changed since the release was made "
             "(plan fingerprint differs): rebuilt samples may differ")
    sources = {r["uid"]: r for r in read_source_index(job.data).rows}
    rows = [planned_row(job, s, sources) for s in samples]
    worker = ShardWorker(job, root, device=device)
    try:
        rebuilt = rebuild(worker, rows)
    finally:
        worker.close()
    stored = stored_samples(root, rows)
    results = []
    for row in rows:
        members, failure = rebuilt[row["uid"]]
        if failure:
            results.append(Comparison(row["uid"], row["kind"], row["shard"], "failed", problems=[failure]))
        else:
            results.append(compare(row, stored[row["uid"]], members, manifest["num_classes"], pixel_tol, logit_tol))
    return results


def main(args) -> int:
    """`tsd regenerate RELEASE --uid UID [--uid UID ...] [--device D] [--pixel-tol N] [--logit-tol X]`."""
    try:
        results = regenerate(args.release, args.uid, args.device, args.pixel_tol, args.logit_tol,
                             warn=lambda m: print(m, file=sys.stderr))
    except RegenerateError as e:
        print(f"tsd regenerate: error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(r.line())
    bad = [r for r in results if r.status in ("differs", "failed")]
    counts = {s: sum(r.status == s for r in results) for s in ("identical", "within tolerance", "differs", "failed")}
    print(f"regenerate: {len(results)} sample(s): " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 1 if bad else 0

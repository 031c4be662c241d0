"""Release: the manifest, the sample index and the dataset card, from the plan and the shard stats."""
from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import __version__
from ..config import JobConfig, add_job_arguments, load_job_args
from ..contract import storage
from ..contract.configlib import to_dict
from ..contract.errors import UserError
from ..contract.files import read_json, write_if_changed
from ..contract.layout import CARD, HEAD_FILE, INDEX, INDEX_COLUMNS, PROBE_METRICS, shard_kind_split
from ..contract.manifest import new_manifest, write_manifest
from ..contract.shards import iter_finished_shards, shard_identity, shard_url, stale_reason
from ..models.teacher_files import weights_identity
from .jobdir import JobFolder, family, generator_files, share_teacher
from .plan import Plan, read_plan
from .segmentation import dense_topk, job_task


def code_version() -> str:
    """Package version, plus the git commit when run from a checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
            return f"tsdistill {__version__}+g{rev.stdout.strip()}{'.dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"tsdistill {__version__}"


def teacher_record(job: JobConfig, root) -> dict:
    probe = read_json(storage.join(root, PROBE_METRICS)) or {}
    backbone = probe.get("backbone")
    if backbone is None:   # a head probed before the probe recorded its backbone: built on the meta device
        from ..models.teacher import describe_backbone

        backbone = describe_backbone(job.teacher)
    return {"arch": job.teacher.arch, "img_size": job.teacher.img_size, "model_kwargs": job.teacher.model_kwargs,
            **backbone,
            "logits": job.generate.logits, "topk": job.generate.topk if job.generate.logits == "topk" else None,
            "features": job.generate.features, "weights": weights_identity(job.teacher),
            "head_sha256": storage.sha256(storage.join(root, HEAD_FILE)), "head": probe.get("head", job.probe.head),
            "val_top1": probe.get("val_top1"), "adaptation": adaptation_record(job, probe),
            **({"val_miou": probe["val_miou"], "val_pixel_acc": probe.get("val_pixel_acc")} if "val_miou" in probe else {})}


def adaptation_record(job: JobConfig, probe: dict) -> dict:
    """How the teacher that labelled the release was adapted to the task: probed (a head on frozen
    features) or finetuned (which parts), and the recipe; the head file's sha256 identifies it."""
    recipe = to_dict(job.probe)
    if job.probe.mode == "probe":
        for key in ("blocks", "layer_decay", "warmup_epochs"):
            recipe.pop(key)
    return {"mode": job.probe.mode, "tuned": probe.get("tuned", []), "recipe": recipe}


def task_record(job: JobConfig, root, num_classes: int) -> dict:
    """The manifest's `task`, and for segmentation its `ignore_index` and `dense`: the teacher's grid
    [h, w] (what the probe measured, else the architecture's) and the encoding of its dense logits."""
    from ..contract.tasks import IGNORE_INDEX, SEGMENTATION

    task = job_task(job)
    if task != SEGMENTATION:
        return {"task": task}
    grid = (read_json(storage.join(root, PROBE_METRICS)) or {}).get("grid")
    if grid is None:
        from ..models.teacher import teacher_grid

        grid = teacher_grid(job.teacher)
    topk = dense_topk(job, num_classes)
    return {"task": task, "ignore_index": IGNORE_INDEX,
            "dense": {"grid": list(grid), "logits": "topk" if topk else "full", "topk": topk}}


def generator_record(job: JobConfig) -> dict | None:
    g = job.generator
    if g is None:
        return None
    rec = {k: v for k, v in to_dict(g).items() if k not in ("path", "compile", "batch_size")}
    rec["files"] = generator_files(job)
    return rec


def build_manifest(job: JobConfig, root, plan: Plan, stats: dict[str, dict],
                   family: dict | None = None, teacher: dict | None = None, missing: list[str] = (),
                   generator: dict | None = None) -> dict:
    """The manifest from each shard's stats (their counts, bytes, sha256 and failures: no per-sample data);
    `teacher`, `generator`: their records, when the caller has them (None: made here); `missing`: planned
    shards released without (`--allow-missing`), recorded with their planned samples."""
    counts = {"real/train": 0, "real/val": 0, "mix/train": 0}
    shards, failures = [], []
    for name in sorted(stats):
        s = stats[name]
        kind, split = shard_kind_split(name)
        counts[f"{kind}/{split}"] += s["count"]
        shards.append({"name": name, "kind": kind, "split": split, "count": s["count"],
                       "bytes": s["bytes"], "sha256": s["sha256"]})
        failures += [dict(f, shard=name) for f in s["failures"]]
    return new_manifest({
        "name": job.release.name,
        "code_version": code_version(),
        "seed": job.seed,
        "plan_fingerprint": plan.fingerprint,
        "config": to_dict(job),
        **task_record(job, root, len(plan.classes)),
        "classes": plan.classes,
        "num_classes": len(plan.classes),
        "image": {"format": job.data.image_format, "quality": job.data.quality, "store_size": job.data.store_size},
        "views": to_dict(job.views),
        "teacher": teacher if teacher is not None else teacher_record(job, root),
        "generator": generator if generator is not None else generator_record(job),
        "counts": counts,
        "shards": shards,
        "failures": failures,
        **({"missing": missing_record(plan, missing)} if missing else {}),
        **({"family": family} if family else {}),
    })


def missing_record(plan: Plan, missing: list[str]) -> dict:
    """What a release made with `--allow-missing` lacks: each planned shard not generated, and the
    samples planned in them (none of which is in the index or the counts)."""
    shards = [{"name": n, "kind": shard_kind_split(n)[0], "split": shard_kind_split(n)[1],
               "planned": plan.shard_rows(n)} for n in missing]
    return {"shards": shards, "samples": sum(s["planned"] for s in shards)}


def index_schema():
    """index.parquet's Arrow schema, from the contract's `INDEX_COLUMNS`."""
    import pyarrow as pa

    def arrow(name: str):
        return pa.list_(arrow(name[5:-1])) if name.startswith("list<") else pa.type_for_alias(name)

    return pa.schema([(name, arrow(kind)) for name, kind in INDEX_COLUMNS])


PLAN_COLUMNS = ["uid", "split", "kind", "shard", "label", "class_name", "parents", "weight", "seed", "views"]
ROW_GROUP = 65536   # index rows per Parquet row group


def shard_index(plan: Plan, name: str, stats: dict):
    """index.parquet's rows of one shard: its planned rows that were made (a failed sample is listed
    in manifest.failures, not here), with the teacher's top-1 and entropy from the shard's stats."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = plan.table(name, PLAN_COLUMNS)
    records = {r["uid"]: r for r in stats["samples"]}
    uids = table.column("uid").to_pylist()
    made = np.array([u in records for u in uids], bool)
    top1 = [records[u]["teacher_top1"] for u in uids if u in records]
    entropy = [records[u]["teacher_entropy"] for u in uids if u in records]
    n_views = pc.list_value_length(table.column("views")).cast(pa.int32())
    table = table.drop_columns(["views"]).append_column("n_views", n_views).filter(pa.array(made))
    table = table.append_column("teacher_top1", pa.array(top1, pa.int32()))
    table = table.append_column("teacher_entropy", pa.array(entropy, pa.float64()))
    return table.select(index_schema().names).cast(index_schema())


def write_release(job: JobConfig, root, plan: Plan, family: dict | None = None, teacher: dict | None = None,
                  allow_missing: int = 0) -> dict:
    """Write index.parquet, README.md and manifest.json (last) for the generated shards; return the
    manifest. Streams shard by shard: the stats of a batch of shards are read at once (concurrently
    from object storage), their rows go to the index, and only each shard's summary is kept.
    Refuses when planned shards are not generated, unless there are at most `allow_missing`: then
    the manifest, the index and the card say exactly which are missing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .card import dataset_card

    root = str(root)
    generator = generator_record(job)
    summaries, pending = {}, []
    with storage.publishing(storage.join(root, INDEX)) as local:
        with pq.ParquetWriter(local, index_schema(), compression="zstd") as writer:
            for name, stats in iter_finished_shards(root, plan.shard_names()):
                # made at the first shard: with none generated, "run tsd generate" is the one line to give
                teacher = teacher if teacher is not None else teacher_record(job, root)
                # the manifest's own records say what made its shards: one that disagrees is refused
                identity = shard_identity(name, plan.fingerprint, teacher["head_sha256"],
                                          teacher["weights"]["sha256"], (generator or {}).get("files"))
                if (reason := stale_reason(stats, identity)) is not None:
                    raise UserError(f"{shard_url(root, name)}: stale shard ({reason}): not made by what this "
                                    f"release records; run `tsd generate` to redo it")
                pending.append(shard_index(plan, name, stats))
                summaries[name] = {k: v for k, v in stats.items() if k != "samples"}
                if sum(len(t) for t in pending) >= ROW_GROUP:
                    writer.write_table(pa.concat_tables(pending))
                    pending = []
            missing = [n for n in plan.shard_names() if n not in summaries]
            if len(missing) > allow_missing:   # raised inside: the index is not published
                allowed = f" (--allow-missing {allow_missing})" if allow_missing else ""
                raise UserError(f"{root}: {len(missing)} planned shard(s) are not generated{allowed} "
                                f"(first: {missing[0]}); run `tsd generate` first, or release without "
                                f"them with `tsd release --allow-missing {len(missing)}`")
            if pending or not summaries:
                writer.write_table(pa.concat_tables(pending) if pending else index_schema().empty_table())
    teacher = teacher if teacher is not None else teacher_record(job, root)
    manifest = build_manifest(job, root, plan, summaries, family, teacher, missing, generator)
    write_if_changed(storage.join(root, CARD), dataset_card(manifest).encode())
    return write_manifest(root, manifest)


def release_folder(folder: JobFolder, job: JobConfig, teacher: dict | None = None, allow_missing: int = 0) -> dict:
    """The release files of one release of the job (`job`: the whole job, for the family record)."""
    return write_release(folder.job, folder.root, read_plan(folder.plan_path), folder.family_record(job), teacher,
                         allow_missing)


@dataclass(frozen=True)
class ReleaseSummary:
    """What `release` wrote: the job folder's release (its manifest.json holds the rest) and the other
    generators' releases beside it."""
    root: str                    # the job folder
    counts: dict                 # 'kind/split' → samples released, as in the manifest
    shards: int                  # shards released
    failed_samples: int          # samples that failed in generation (named in the manifest)
    missing: tuple               # planned shards released without (--allow-missing)
    missing_samples: int         # the samples planned in them
    members: tuple               # (generator kind, root) of each other generator's release (generator.kinds)

    @classmethod
    def of(cls, root: str, manifest: dict, members: list[JobFolder]) -> "ReleaseSummary":
        missing = manifest.get("missing", {"shards": [], "samples": 0})
        return cls(root, dict(manifest["counts"]), len(manifest["shards"]), len(manifest["failures"]),
                   tuple(s["name"] for s in missing["shards"]), missing["samples"],
                   tuple((m.kind, m.root) for m in members))

    def to_json(self) -> dict:
        return asdict(self)


def release_stage(job: JobConfig, out, allow_missing: int = 0) -> ReleaseSummary:
    """The release files of the job folder `out`, from its plan and generated shards, and those of
    each other generator's release (generator.kinds); what was written.
    `allow_missing`: shards each release may lack (see `write_release`)."""
    job_folder, *others = family(job, out)
    # one teacher record for the family, made by the first release written: the members hold the
    # same head and probe metrics (copied) and their jobs differ only in the generator, and making
    # it hashes the teacher's weights (GBs)
    teacher = None
    for member in others:
        share_teacher(job_folder.root, member)
        teacher = release_folder(member, job, teacher, allow_missing)["teacher"]
    manifest = release_folder(job_folder, job, teacher, allow_missing)
    return ReleaseSummary.of(job_folder.root, manifest, others)


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    add_job_arguments(p)
    p.add_argument("--allow-missing", type=int, default=0, metavar="N",
                   help="release even when up to N planned shards failed; the manifest, index and card "
                        "name them and count their samples")


def run(args) -> int:
    job, out = load_job_args(args), storage.location(args.out)
    if args.allow_missing < 0:
        raise UserError(f"--allow-missing: must be >= 0, got {args.allow_missing}")
    r = release_stage(job, out, args.allow_missing)
    counts = ", ".join(f"{k} {v}" for k, v in r.counts.items())
    print(f"release: {args.out}: {counts}; {r.shards} shards, {r.failed_samples} failed samples")
    if r.missing:
        print(f"release: {args.out}: MISSING {len(r.missing)} shard(s), {r.missing_samples} planned samples: "
              + ", ".join(r.missing))
    for kind, root in r.members:
        print(f"release: {root}: the {kind} mixes, under the same teacher")
    return 0

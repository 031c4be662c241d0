"""What the report shows, as plain JSON-able dicts: read from a release's manifest, index and shard
stats, the few shards that hold the shown samples, and run / compare folders.

It scales with what is shown, not with the release: the index is read as columns and the bounded
sample (the `mixes` highest-entropy mixes, `per_class` real images per class) is picked there; only
the shards holding a picked sample (or a parent of one) are opened, each once
(`ReleaseReader.samples`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...contract import storage
from ...contract.files import read_json
from ...contract.manifest import manifest_task
from ...contract.samples import M_JSON, SampleMeta, dense_logits, image_member, teacher_mean_probs
from ...contract.shards import iter_finished_shards
from ...contract.tasks import CLASSIFICATION
from ...contract.views import view_box
from ..reader import ReleaseReader
from ..verify import verify_release

TOP_K = 5
INDEX_COLUMNS = ["uid", "split", "kind", "shard", "label", "class_name", "parents", "weight", "seed",
                 "n_views", "teacher_top1", "teacher_entropy"]


# -- the release ---------------------------------------------------------------------------------
def release_summary(release: ReleaseReader) -> dict:
    """Name, task, counts, classes and their frequencies (real images per label; none for a
    segmentation release, whose images have no label: `data_seg.mask_pixels`), models with sha256,
    config, verify --quick."""
    m = release.manifest
    import pyarrow.compute as pc

    freq = None
    if manifest_task(m) == CLASSIFICATION:
        table = release.index_table(["kind", "label"])
        real = table.filter(pc.and_(pc.equal(table.column("kind"), "real"),
                                    pc.greater_equal(table.column("label"), 0)))
        freq = np.bincount(real.column("label").to_numpy(), minlength=len(m["classes"])).tolist()
    problems = verify_release(release.root, quick=True)
    teacher = m.get("teacher") or {}
    models = [{"role": "teacher", "name": teacher.get("arch"), "files": teacher.get("weights"),
               "head_sha256": teacher.get("head_sha256"), "val_top1": teacher.get("val_top1"),
               # a segmentation teacher's own measure (the probe's, recorded by the release)
               **{k: teacher[k] for k in ("val_miou", "val_pixel_acc") if k in teacher}}]
    if m.get("generator"):
        g = m["generator"]
        models.append({"role": "generator", "name": g.get("kind"), "files": g.get("files")})
    return {"name": m.get("name"), "root": release.root, "task": m.get("task", "classification"),
            "format_version": m.get("format_version"), "code_version": m.get("code_version"),
            "counts": m.get("counts"), "classes": m["classes"], "class_counts": freq,
            "models": models, "config": m.get("config"), "failures": len(m.get("failures") or []),
            "verify_quick": {"ok": not problems, "problems": [f"{w}: {p}" for w, p in problems[:20]],
                             "count": len(problems)}}


def generation_stats(release: ReleaseReader) -> dict:
    """Per node: shards, seconds per shard, failures, from each shard's stats file (its per-sample
    records dropped as it is read)."""
    m = release.manifest
    names = [s["name"] for s in m["shards"]]
    per_node: dict[str, dict] = {}
    shards = []
    for name, s in iter_finished_shards(release.root, names,
                                        keep=lambda s: {k: v for k, v in s.items() if k != "samples"}):
        node = str(s.get("node") or s.get("node_id") or s.get("host") or "?")
        rec = per_node.setdefault(node, {"node": node, "host": s.get("host"), "shards": 0, "seconds": 0.0,
                                         "samples": 0, "failures": 0, "devices": set()})
        rec["shards"] += 1
        rec["seconds"] += float(s.get("seconds") or 0)
        rec["samples"] += int(s.get("count") or 0)
        rec["failures"] += len(s.get("failures") or [])
        rec["devices"].add(str(s.get("device")))
        shards.append({"name": name, "node": node, "seconds": s.get("seconds"), "count": s.get("count"),
                       "failures": len(s.get("failures") or [])})
    nodes = []
    for rec in per_node.values():
        rec["devices"] = sorted(rec["devices"])
        rec["seconds_per_shard"] = rec["seconds"] / rec["shards"] if rec["shards"] else None
        nodes.append(rec)
    return {"nodes": sorted(nodes, key=lambda r: r["node"]), "shards": shards}


# -- picking the shown samples -------------------------------------------------------------------
def pick(release: ReleaseReader, mixes: int, per_class: int, extra: set[str] = frozenset(), group: str = "label"
         ) -> tuple[list[dict], list[dict], dict]:
    """(the `mixes` highest-entropy mixes, up to `per_class` real images per class (val first, then
    train), the index rows of the mixes' parents and of the `extra` uids), each from the index alone.
    An image's class is its index column `group`: its label, or for segmentation (no label) the
    teacher's dominant class, `teacher_top1`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = release.index_table(INDEX_COLUMNS)
    mix_table = table.filter(pc.equal(table.column("kind"), "mix"))
    order = pc.sort_indices(mix_table, sort_keys=[("teacher_entropy", "descending"), ("uid", "ascending")])
    top = mix_table.take(order[:mixes]).to_pylist()
    real = table.filter(pc.equal(table.column("kind"), "real"))
    # val images first: the teacher never trained on them, so "right or wrong" means something
    rank = pc.if_else(pc.equal(real.column("split"), "val"), 0, 1)
    real = real.append_column("_rank", rank)
    order = pc.sort_indices(real, sort_keys=[(group, "ascending"), ("_rank", "ascending"), ("uid", "ascending")])
    real = real.take(order)
    labels = real.column(group).to_numpy()
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]) if len(labels) else np.array([], int)
    keep = np.concatenate([np.arange(s, min(s + per_class, e)) for s, e in
                           zip(starts, np.r_[starts[1:], len(labels)])]) if len(starts) else np.array([], int)
    shown_real = real.take(pa.array(keep, pa.int64())).drop_columns(["_rank"]).to_pylist()
    wanted = ({p for r in top for p in r["parents"]} | set(extra)) - {r["uid"] for r in shown_real}
    parents = table.filter(pc.is_in(table.column("uid"), pa.array(sorted(wanted), pa.string()))).to_pylist() \
        if wanted else []
    return top, shown_real, {r["uid"]: r for r in parents}


# -- one sample ----------------------------------------------------------------------------------
def sample_record(row: dict, members: dict, classes: list[str]) -> dict:
    """What a card and a sample page show: the teacher's top-5 (mean over the views) with entropy,
    and each view's box (fractions of the image) with its own top-1."""
    where = f"{row['shard']}:{row['uid']}"
    meta = SampleMeta.from_json(members[M_JSON], where)
    logits = dense_logits(members, meta, len(classes), where)
    p = teacher_mean_probs(logits)
    top = np.argsort(-p, kind="stable")[:TOP_K]
    views = []
    for view, z in zip(meta.views, logits):
        pv = teacher_mean_probs(z[None])
        c = int(pv.argmax())
        views.append({"box": box_fractions(view, meta.width, meta.height),
                      "flip": bool(view[4]), "top1": c, "top1_name": classes[c], "p": float(pv[c])})
    entropy = float(-(p * np.log(np.clip(p, 1e-12, None))).sum())
    return {**sample_facts(row, meta), "entropy": entropy,
            "top5": [{"c": int(c), "name": classes[int(c)], "p": float(p[c])} for c in top],
            "teacher_top1": int(top[0]), "confidence": float(p[top[0]]), "views": views}


def box_fractions(view, width: int, height: int) -> list[float]:
    """A view's pixel box as [x, y, w, h] fractions of the image: where the page draws it."""
    x0, y0, x1, y1 = view_box(view, width, height)
    return [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height]


def sample_facts(row: dict, meta: SampleMeta) -> dict:
    """What a sample's index row and json say of it, for either task's record."""
    # the seed as a string: 64 bits are more than a JavaScript number holds exactly
    return {"uid": row["uid"], "kind": row["kind"], "split": row["split"], "shard": row["shard"],
            "seed": str(row["seed"]), "label": int(row["label"]), "class_name": row.get("class_name"),
            "parents": list(row.get("parents") or []), "weight": row.get("weight"), "generator": meta.generator,
            "width": meta.width, "height": meta.height}


def read_samples(release: ReleaseReader, rows: list[dict]) -> dict[str, dict]:
    """{uid: members} of the rows, each shard that holds one read once."""
    return release.samples(rows)


def image_bytes(members: dict) -> bytes:
    return members[image_member(members)]


# -- runs and compares ---------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue   # a line cut short by a kill
    return out


PREDICTION_FILES = ("predictions.jsonl", "eval/predictions.jsonl")   # `tsd eval --predictions`, the demo
DISAGREEMENTS_KEPT = 200   # per run, in the data; the page shows the images of the first few


def run_record(folder: Path, name: str, classes: list[str]) -> dict:
    """A `tsd train` run folder: its curves (log.jsonl, val.jsonl), final metrics, and, when its eval
    wrote predictions, per-class accuracy, the confusion matrix and the student/teacher disagreements."""
    from trainer.runlog import LOG, VAL_LOG

    metrics = read_json(folder / "metrics.json") or {}
    rec = {"name": name, "folder": str(folder), "train": _jsonl(folder / LOG), "val": _jsonl(folder / VAL_LOG),
           "metrics": {k: v for k, v in (metrics.get("val") or {}).items() if not isinstance(v, (dict, list))},
           "mode": (metrics.get("train") or {}).get("mode"), "arch": (metrics.get("student") or {}).get("arch")}
    preds = next((folder / p for p in PREDICTION_FILES if (folder / p).exists()), None)
    if preds is not None:
        rows = _jsonl(preds)
        c = len(classes)
        confusion = np.zeros((c, c), dtype=np.int64)
        for r in rows:
            if 0 <= r["label"] < c and 0 <= r["pred"] < c:
                confusion[r["label"], r["pred"]] += 1
        n = confusion.sum(1)
        rec["confusion"] = confusion.tolist()
        rec["per_class"] = [{"class": classes[i], "n": int(n[i]),
                             "top1": float(confusion[i, i] / n[i]) if n[i] else None} for i in range(c)]
        disagree = [r for r in rows if r["pred"] != r["teacher"]]
        rec["disagreements_total"] = len(disagree)
        rec["disagreements"] = disagree[:DISAGREEMENTS_KEPT]
    return rec


def collect_runs(paths: list[str], classes: list[str]) -> tuple[list[dict], list[dict]]:
    """(runs, compares) from the given folders: a compare folder (results.json) brings its table and
    every run under it; a run folder (log.jsonl or metrics.json) is one run."""
    from trainer.compare import RESULTS_JSON, metric_of

    runs, compares = [], []
    for p in paths:
        folder = Path(storage.local_path(p))
        results = read_json(folder / RESULTS_JSON)
        if results is not None:
            key, label = metric_of(results)   # the task's headline: val_top1, or val_miou per seed in a row
            compares.append({"name": folder.name, "folder": str(folder), "student": results.get("student"),
                             "budget": results.get("budget"), "std": results.get("std"),
                             "metric": {"key": key, "label": label, "values": f"val_{key}"},
                             "rows": [{k: r.get(k) for k in ("id", "label", "teacher", "mean", "std", f"val_{key}",
                                                             "seeds", "steps", "real_images", "mix_images",
                                                             "runs")} for r in results.get("rows", [])]})
            for row in results.get("rows", []):
                for rel in row.get("runs", []):
                    runs.append(run_record(folder / rel, f"{folder.name}/{rel}", classes))
        elif (folder / "log.jsonl").exists() or (folder / "metrics.json").exists():
            runs.append(run_record(folder, folder.name, classes))
        else:
            from ...contract.errors import UserError
            raise UserError(f"{p}: neither a run folder (log.jsonl, metrics.json) nor a compare folder "
                            f"({RESULTS_JSON})")
    return runs, compares

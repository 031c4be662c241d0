"""Evaluation on a release's real/val shards: top-1, top-5, and agreement with the teacher.

The teacher's logits on the val view are stored in the shards, so agreement (student top-1 ==
teacher top-1) needs no teacher. Under DDP each rank evaluates its share of the val shards and
the counts are summed.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from pipeline.contract.configlib import ConfigError
from pipeline.contract.device import resolve_device
from pipeline.contract.tasks import SEGMENTATION

from .data import val_loader
from .evaluate_seg import (evaluate_segmentation, probe_metrics, sum_over_ranks, teacher_segmentation, val_batches,
                            val_outputs, write_per_class_iou)
from .release import ReleaseSet, open_releases
from .runfiles import EVAL
from .samples import DataError, Replay
from .students import load_student

TEACHER = "teacher"           # `tsd eval teacher RELEASE`: the stored teacher logits instead of a student
TEACHER_DECODE_SIZE = 8       # the val loader decodes a view; the teacher's metrics read only its logits


@torch.no_grad()
def evaluate(model: torch.nn.Module, releases: ReleaseSet, img_size: int, mean, std, *, batch_size: int = 256,
             workers: int = 2, device="cpu", precision: str = "fp32", channels_last: bool = False,
             on_corrupt: str = "error", predictions: bool = False, rank: int = 0, world: int = 1,
             task: str | None = None) -> dict:
    """Metrics of `model` on the val shards: {n, top1, top5 (None when C < 5), agreement,
    teacher_top1, skipped (corrupt samples), skipped_shards (the same per shard)[, predictions: per-sample
    dicts of this rank]}. A segmentation release (or `task`): `evaluate_seg.evaluate_segmentation`'s metrics."""
    if (task or releases.task) == SEGMENTATION:
        return evaluate_segmentation(model, releases, img_size, mean, std, batch_size=batch_size, workers=workers,
                                     device=device, precision=precision, channels_last=channels_last,
                                     on_corrupt=on_corrupt, rank=rank, world=world)
    device = torch.device(device)
    num_classes = releases.num_classes
    replay = Replay(num_classes, img_size, seed=0, on_corrupt=on_corrupt)
    loader = val_loader(releases, batch_size, workers, replay, rank, world, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    # n, top-1 hits, top-5 hits, agreement with the teacher, teacher top-1 hits
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    rows, lost = [], {}   # lost: corrupt samples per shard (a batch's "skipped" is their sum)
    for batch, out in val_outputs(model, loader, lost, "logits", device, img_size, mean, std, precision,
                                  channels_last):
        out = out.float()
        labels = batch["label"].to(device)
        teacher = batch["logits"].to(device).argmax(1)
        top = out.topk(min(5, num_classes), dim=1).indices
        sums[0] += len(labels)
        sums[1] += (top[:, 0] == labels).sum()
        sums[2] += (top == labels[:, None]).any(1).sum()
        sums[3] += (top[:, 0] == teacher).sum()
        sums[4] += (teacher == labels).sum()
        if predictions:
            rows += [{"uid": u, "label": int(l), "pred": int(p), "teacher": int(t)}
                     for u, l, p, t in zip(batch["uid"], labels.tolist(), top[:, 0].tolist(), teacher.tolist())]
    lost = sum_over_ranks([sums], lost, world)
    model.train(was_training)
    n, top1, top5, agree, teacher_top1 = sums.tolist()
    if n == 0:
        raise DataError(f"{releases.describe()}: no usable validation sample")
    metrics = {"n": int(n), "top1": top1 / n, "top5": top5 / n if num_classes >= 5 else None,
               "agreement": agree / n, "teacher_top1": teacher_top1 / n, "skipped": sum(lost.values()),
               "skipped_shards": dict(sorted(lost.items()))}
    if predictions:
        metrics["predictions"] = rows
    return metrics


def per_class(rows: list[dict], classes: list[str]) -> tuple[np.ndarray, list[dict]]:
    """(confusion matrix [true, predicted] of counts, per-class rows {class, n, top1, teacher_top1})."""
    c = len(classes)
    confusion = np.zeros((c, c), dtype=np.int64)
    teacher_hits = np.zeros(c, dtype=np.int64)
    for r in rows:
        confusion[r["label"], r["pred"]] += 1
        teacher_hits[r["label"]] += r["teacher"] == r["label"]
    n = confusion.sum(1)
    table = [{"class": name, "n": int(n[i]), "top1": float(confusion[i, i] / n[i]) if n[i] else None,
              "teacher_top1": float(teacher_hits[i] / n[i]) if n[i] else None} for i, name in enumerate(classes)]
    return confusion, table


def plot_confusion(confusion: np.ndarray, classes: list[str], title: str, out: Path) -> Path | None:
    """confusion.png: rows normalised to the true class (the diagonal is per-class accuracy); counts
    written in the cells up to 20 classes, names on the axes up to 60. None when matplotlib is absent."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    c = len(classes)
    n = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, n, out=np.zeros(confusion.shape), where=n > 0)
    side = min(16.0, max(5.0, 0.32 * c + 2.5))
    fig = Figure(figsize=(side + 1.2, side), dpi=110)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="share of the true class's images")
    if c <= 20:
        for i, j in zip(*np.nonzero(confusion)):
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    if c <= 60:
        size = 8 if c <= 30 else 6
        ax.set_xticks(range(c), classes, rotation=90, fontsize=size)
        ax.set_yticks(range(c), classes, fontsize=size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor="white")
    return out


def write_per_class(table: list[dict], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "n", "top1", "teacher_top1"])
        for r in table:
            writer.writerow([r["class"], r["n"], *("" if r[k] is None else f"{r[k]:.4f}" for k in ("top1", "teacher_top1"))])
    return out


def eval_report(metrics: dict, rows: list[dict], info: dict, release: str, out: Path,
                run: str | None = None) -> tuple[Path, Path | None]:
    """per_class.csv, confusion.png (the student's, titled by the run `run` when named) and
    confusion-teacher.png (the stored teacher logits on the same val views) in `out` (the PNGs only with
    matplotlib); adds metrics['per_class']."""
    confusion, table = per_class(rows, info["classes"])
    metrics["per_class"] = table
    who = f"{run} ({info['arch']})" if run else info["arch"]
    title = f"{who} on {Path(str(release)).name}: val top-1 {metrics['top1']:.3f} (n={metrics['n']})"
    png = plot_confusion(confusion, info["classes"], title, out / "confusion.png")
    teacher_report([dict(r, pred=r["teacher"]) for r in rows], info["classes"], release, out, "confusion-teacher.png",
                   csv_name=None)
    return write_per_class(table, out / "per_class.csv"), png


def teacher_report(rows: list[dict], classes: list[str], release: str, out: Path, png_name: str = "confusion.png",
                   csv_name: str | None = "per_class.csv") -> tuple[dict, Path | None, Path | None]:
    """The teacher's val metrics from `rows` whose 'pred' is the teacher's top-1: {n, top1, per_class},
    its confusion matrix as `png_name` and (when `csv_name`) its per-class table, in `out`."""
    confusion, table = per_class(rows, classes)
    n = int(confusion.sum())
    metrics = {"n": n, "top1": float(confusion.trace() / n) if n else 0.0,
               "per_class": [{k: r[k] for k in ("class", "n", "top1")} for r in table]}
    title = f"teacher (stored logits) on {Path(str(release)).name}: val top-1 {metrics['top1']:.3f} (n={n})"
    png = plot_confusion(confusion, classes, title, out / png_name)
    csv_path = write_per_class(table, out / csv_name) if csv_name else None
    return metrics, csv_path, png


def teacher_rows(releases: ReleaseSet, workers: int = 2) -> list[dict]:
    """Every val sample's label and the stored teacher's top-1 on its val view (no model, no teacher run)."""
    replay = Replay(releases.num_classes, TEACHER_DECODE_SIZE, seed=0)
    rows = []
    for batch in val_batches(val_loader(releases, 256, workers, replay), {}, "logits"):
        teacher = batch["logits"].argmax(1).tolist()
        rows += [{"uid": u, "label": int(l), "pred": t, "teacher": t}
                 for u, l, t in zip(batch["uid"], batch["label"].tolist(), teacher)]
    if not rows:
        raise DataError(f"{releases.describe()}: no usable validation sample")
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt", help="a run folder, or a student.safetensors with its student.json beside it; or the "
                        "word 'teacher': the release's stored teacher logits on its val views")
    parser.add_argument("release", help="release folder or fsspec URL whose real/val shards are evaluated")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where confusion.png and per_class.csv go (default: eval/ in the run folder; "
                             "teacher-eval/ here for the teacher)")
    parser.add_argument("--json", default=None, help="write the metrics to this JSON file")
    parser.add_argument("--predictions", default=None, help="write per-sample predictions (JSON lines) here")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"), help="autocast on CUDA")


def run_teacher(args: argparse.Namespace) -> int:
    """`tsd eval teacher RELEASE`: the teacher's val top-1, per class and its confusion, from the stored logits."""
    releases = open_releases([args.release])
    if releases.task == SEGMENTATION:
        return run_teacher_segmentation(args, releases)
    rows = teacher_rows(releases, args.workers)
    out = Path(args.out) if args.out else Path("teacher-eval")
    metrics, csv_path, png = teacher_report(rows, releases.classes, args.release, out)
    print(f"teacher on {args.release}: top1 {metrics['top1']:.4f} (n={metrics['n']}), from the teacher logits "
          "stored on each val view")
    _print_report(metrics, csv_path, png)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(metrics, ckpt=TEACHER, release=args.release), indent=1))
    if args.predictions:
        Path(args.predictions).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


def run_teacher_segmentation(args: argparse.Namespace, releases: ReleaseSet) -> int:
    """`tsd eval teacher` of a segmentation release: the stored teacher's val mIoU, pixel accuracy and
    per-class IoU (per_class_iou.csv, beside the probe's), at the teacher's input size."""
    size = int(releases.releases[0].manifest["teacher"]["img_size"])
    metrics = teacher_segmentation(releases, size, args.batch_size, args.workers)
    probe = probe_metrics(args.release)
    out = Path(args.out) if args.out else Path("teacher-eval")
    csv_path = write_per_class_iou(metrics, releases.classes, probe, out)
    said = f"; the probe measured {probe['val_miou']:.4f}" if probe and "val_miou" in probe else ""
    print(f"teacher on {args.release}: val mIoU {metrics['miou']:.4f}, pixel accuracy {metrics['pixel_acc']:.4f} "
          f"(n={metrics['n']} images at {size} px), from the dense logits stored on each val view{said}")
    worst = sorted((v, name) for name, v in zip(releases.classes, metrics["per_class_iou"]) if v is not None)
    print(f"per-class IoU: {csv_path}; lowest: " + ", ".join(f"{name} {v:.3f}" for v, name in worst[:3]))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(metrics, probe=probe, ckpt=TEACHER, release=args.release), indent=1))
    return 0


def _print_report(metrics: dict, csv_path: Path, png: Path | None) -> None:
    worst = sorted((r for r in metrics["per_class"] if r["top1"] is not None), key=lambda r: (r["top1"], r["class"]))
    print(f"per-class top-1: {csv_path}; lowest: " + ", ".join(f"{r['class']} {r['top1']:.3f}" for r in worst[:3]))
    print(f"confusion matrix: {png}" if png else
          "note: no confusion.png: matplotlib is not installed (pip install 'tsdistill[viz]')")


def evaluate_checkpoint(ckpt, release: str, *, batch_size: int = 256, workers: int = 2, device: str = "auto",
                        precision: str = "bf16", predictions: bool = False) -> tuple[dict, dict]:
    """(metrics, student info) of a saved student (run folder or student.safetensors) on a release."""
    model, info = load_student(ckpt)
    releases = open_releases([release])
    if releases.classes != info["classes"]:
        raise ConfigError(f"{release}: classes differ from the student's ({ckpt})")
    task = info.get("task", "classification")
    if releases.task != task:
        raise ConfigError(f"{release}: a {releases.task} release, the student ({ckpt}) is for {task}")
    if task == SEGMENTATION:
        predictions = False    # per-sample rows are classification's (a pixel map per view is not a row)
    device = resolve_device(device)
    model.to(device)
    metrics = evaluate(model, releases, info["img_size"], info["mean"], info["std"], batch_size=batch_size,
                       workers=workers, device=device, precision=precision, predictions=predictions)
    return metrics, info


def report_segmentation(args: argparse.Namespace, metrics: dict, info: dict) -> int:
    """`tsd eval` of a segmentation student: one line, per_class_iou.csv (the student's IoU beside the
    stored teacher's and the probe's), the metrics JSON when asked."""
    probe = probe_metrics(args.release)
    said = f"probe mIoU {probe['val_miou']:.4f}" if probe and "val_miou" in probe else "no teacher/probe.json"
    print(f"{info['arch']} ({info.get('decoder', 'linear')}) on {args.release}: mIoU {metrics['miou']:.4f}  pixel "
          f"accuracy {metrics['pixel_acc']:.4f}  agreement {metrics['agreement']:.4f}  (teacher on the same views: "
          f"mIoU {metrics['teacher_miou']:.4f}; {said}; n={metrics['n']} images)")
    ckpt = Path(args.ckpt)
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent) / EVAL
    csv_path = write_per_class_iou(metrics, info["classes"], probe, out)
    print(f"per-class IoU: {csv_path}")
    if args.predictions:
        print("note: --predictions is for classification students; not written")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(metrics, probe=probe, ckpt=str(args.ckpt), release=args.release),
                                              indent=1))
    return 0


def run(args: argparse.Namespace) -> int:
    """`tsd eval CKPT RELEASE`: prints one line; writes per_class.csv, confusion.png and
    confusion-teacher.png (and JSON when asked). `tsd eval teacher RELEASE`: the same for the teacher."""
    if args.ckpt == TEACHER:
        return run_teacher(args)
    metrics, info = evaluate_checkpoint(args.ckpt, args.release, batch_size=args.batch_size,
                                        workers=args.workers, device=args.device, precision=args.precision,
                                        predictions=True)
    if info.get("task") == SEGMENTATION:
        return report_segmentation(args, metrics, info)
    rows = metrics.pop("predictions")
    top5 = "-" if metrics["top5"] is None else f"{metrics['top5']:.4f}"
    print(f"{info['arch']} on {args.release}: top1 {metrics['top1']:.4f}  top5 {top5}  "
          f"agreement {metrics['agreement']:.4f}  (teacher top1 {metrics['teacher_top1']:.4f}, n={metrics['n']})")
    ckpt = Path(args.ckpt)
    folder = ckpt if ckpt.is_dir() else ckpt.parent
    out = Path(args.out) if args.out else folder / EVAL
    csv_path, png = eval_report(metrics, rows, info, args.release, out, run=folder.resolve().name)
    _print_report(metrics, csv_path, png)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(metrics, ckpt=str(args.ckpt), release=args.release), indent=1))
    if args.predictions:
        Path(args.predictions).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


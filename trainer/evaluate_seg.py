"""Segmentation evaluation on a release's real/val shards: mIoU, pixel accuracy, per-class IoU, and
per-pixel agreement with the teacher.

Counts go to confusion matrices (`pipeline.contract.miou`, the probe's own measure) accumulated on the
device over the whole validation set and read once at the end: no host sync per batch. Predictions
meet the mask at the view's mask size (the student's `img_size`): the student's logits and the
teacher's stored dense logits are both upsampled there bilinearly (`contract.dense.upsample_logits`).
Agreement is over every pixel of the views, labelled or not (the teacher labels them all). Under
DDP each rank evaluates its share of the val shards and the matrices are summed.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from pipeline.contract import storage
from pipeline.contract.dense import upsample_logits
from pipeline.contract.device import autocast
from pipeline.contract.errors import UserError
from pipeline.contract.layout import PROBE_METRICS
from pipeline.contract.miou import confusion, scores
from pipeline.contract.tasks import SEGMENTATION

from .data import batches, model_inputs, val_loader
from .release import ReleaseSet
from .samples import DataError, Replay, add_counts

PER_CLASS_CSV = "per_class_iou.csv"   # `tsd eval`'s per-class table for a segmentation student
UPSAMPLE_CHUNK = 8   # views upsampled at once by `teacher_segmentation`: 150 classes at 448 px are 120 MB a view


@torch.no_grad()
def evaluate_segmentation(model: torch.nn.Module, releases: ReleaseSet, img_size: int, mean, std, *,
                          batch_size: int = 64, workers: int = 2, device="cpu", precision: str = "fp32",
                          channels_last: bool = False, on_corrupt: str = "error", rank: int = 0,
                          world: int = 1) -> dict:
    """{n (images), pixels (labelled), miou, pixel_acc, per_class_iou, agreement, teacher_miou,
    teacher_pixel_acc, teacher_per_class_iou, skipped, skipped_shards} of a dense `model` on the val shards."""
    device = torch.device(device)
    c = releases.num_classes
    replay = Replay(c, img_size, seed=0, on_corrupt=on_corrupt, task=SEGMENTATION)
    loader = val_loader(releases, batch_size, workers, replay, rank, world, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    student = torch.zeros(c, c, dtype=torch.int64, device=device)
    teacher = torch.zeros(c, c, dtype=torch.int64, device=device)
    sums = torch.zeros(3, dtype=torch.int64, device=device)    # images, pixels where student == teacher, pixels
    lost: dict = {}
    for batch, out in val_outputs(model, loader, lost, "teacher", device, img_size, mean, std, precision,
                                  channels_last):
        mask = batch["mask"].to(device)
        size = tuple(mask.shape[-2:])
        pred = upsample_logits(out.float(), size).argmax(1)
        said = upsample_logits(batch["teacher"].to(device).float(), size).argmax(1)
        student += confusion(pred, mask, c)
        teacher += confusion(said, mask, c)
        sums += torch.stack([torch.tensor(len(batch["uid"]), device=device), (pred == said).sum(),
                             torch.tensor(pred.numel(), device=device)])
    lost = sum_over_ranks([student, teacher, sums], lost, world)
    model.train(was_training)
    n, agree, pixels = sums.tolist()            # the one read of the pass
    if n == 0:
        raise DataError(f"{releases.describe()}: no usable validation sample")
    mine, theirs = scores(student), scores(teacher)
    return {"n": n, "pixels": mine["pixels"], "miou": mine["miou"], "pixel_acc": mine["pixel_acc"],
            "per_class_iou": mine["per_class_iou"], "agreement": agree / pixels,
            "teacher_miou": theirs["miou"], "teacher_pixel_acc": theirs["pixel_acc"],
            "teacher_per_class_iou": theirs["per_class_iou"], "skipped": sum(lost.values()),
            "skipped_shards": dict(sorted(lost.items()))}


@torch.no_grad()
def teacher_segmentation(releases: ReleaseSet, size: int, batch_size: int = 64, workers: int = 2) -> dict:
    """{n, pixels, miou, pixel_acc, per_class_iou, skipped} of the teacher whose dense logits the release
    stores, on each val image's recorded view: the logits upsampled to the view's mask at `size` (the
    teacher's input size: where the probe measures it), one confusion matrix. No model runs."""
    c = releases.num_classes
    replay = Replay(c, size, seed=0, task=SEGMENTATION)
    conf = torch.zeros(c, c, dtype=torch.int64)
    n, lost = 0, {}
    for batch in val_batches(val_loader(releases, batch_size, workers, replay), lost, "teacher"):
        mask, logits = batch["mask"], batch["teacher"]
        for i in range(0, len(mask), UPSAMPLE_CHUNK):
            up = upsample_logits(logits[i:i + UPSAMPLE_CHUNK].float(), tuple(mask.shape[-2:]))
            conf += confusion(up.argmax(1), mask[i:i + UPSAMPLE_CHUNK], c)
        n += len(batch["uid"])
    if n == 0:
        raise DataError(f"{releases.describe()}: no usable validation sample")
    theirs = scores(conf)
    return {"n": n, "pixels": theirs["pixels"], "miou": theirs["miou"], "pixel_acc": theirs["pixel_acc"],
            "per_class_iou": theirs["per_class_iou"], "skipped": sum(lost.values())}


def sum_over_ranks(tensors: list, lost: dict, world: int) -> dict:
    """Under DDP: every rank's counts summed into `tensors` (in place), and the corrupt samples lost
    per shard over all ranks returned; one rank: `lost` as it is."""
    if world == 1:
        return lost
    for t in tensors:
        torch.distributed.all_reduce(t)
    parts = [None] * world
    torch.distributed.all_gather_object(parts, lost)
    total: dict = {}
    for part in parts:
        add_counts(total, part)
    return total


def val_batches(loader, lost: dict, teacher_key: str):
    """A val loader's batches holding samples, adding the corrupt samples it skipped per shard to
    `lost` (a batch of skips only has no `teacher_key` and is not given)."""
    for batch in batches(loader):
        add_counts(lost, batch.get("skipped_shards", {}))
        if teacher_key in batch:
            yield batch


def val_outputs(model, loader, lost: dict, teacher_key: str, device, img_size: int, mean, std, precision: str,
                channels_last: bool):
    """(batch, model output) over `val_batches`."""
    for batch in val_batches(loader, lost, teacher_key):
        x = model_inputs(batch, device, img_size, mean, std, channels_last)
        with autocast(device, precision):
            yield batch, model(x)


def probe_metrics(release: str) -> dict | None:
    """The teacher's own segmentation numbers from the release's teacher/probe.json ({val_miou,
    val_pixel_acc, per_class_iou: {class: IoU}}: those present and numeric; the probe writes the
    per-class IoU as `val_per_class_iou`, keyed by class name), or None when it has none readable."""
    try:
        data = json.loads(storage.read_bytes(storage.join(release, PROBE_METRICS)))
    except (OSError, ValueError, UserError):   # absent, unreadable or not JSON: no probe numbers
        return None
    if not isinstance(data, dict):
        return None
    out = {k: float(data[k]) for k in ("val_miou", "val_pixel_acc") if isinstance(data.get(k), (int, float))}
    per_class = data.get("val_per_class_iou")
    if isinstance(per_class, dict) and all(v is None or isinstance(v, (int, float)) for v in per_class.values()):
        out["per_class_iou"] = per_class
    return out or None


def write_per_class_iou(metrics: dict, classes: list[str], probe: dict | None, folder: Path) -> Path:
    """folder/per_class_iou.csv: class, the student's IoU, the stored teacher's on the same views, the
    probe's (`tsd eval teacher`: class, the stored teacher's IoU, the probe's)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / PER_CLASS_CSV
    probe_iou = (probe or {}).get("per_class_iou") or {}
    columns = {"iou": metrics["per_class_iou"]}
    if "teacher_per_class_iou" in metrics:
        columns["teacher_iou"] = metrics["teacher_per_class_iou"]

    def cell(values, i):
        return "" if i >= len(values) or values[i] is None else f"{values[i]:.4f}"

    def by_name(name):
        return "" if probe_iou.get(name) is None else f"{probe_iou[name]:.4f}"
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", *columns, "probe_iou"])
        for i, name in enumerate(classes):
            writer.writerow([name, *(cell(values, i) for values in columns.values()), by_name(name)])
    return out

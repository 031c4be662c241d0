"""One stored sample → one training item: the recorded view replayed, the teacher's logits for it.

Each sample carries K views (crop box + flip) and the teacher's logits on each. The trainer picks
one view per sample and epoch, uniformly, with an RNG seeded by (seed, epoch, uid), and builds its
pixels with `pipeline.contract.views.view_pixels`: the function the generation worker applied
before the teacher, so the student sees the pixels whose logits it is taught. Members are decoded
with `pipeline.contract` only (no webdataset decoder: its defaults include pickle).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.contract.errors import UserError
from pipeline.contract.ids import derive_seed
from pipeline.contract.images import IMAGE_FORMATS, decode_image
from pipeline.contract.logs import get_logger
from pipeline.contract.masks import decode_mask
from pipeline.contract.samples import (M_FEATURES, M_JSON, M_MASK, SampleMeta, decode_dense, dense_logits, image_member,
                                       npy_load)
from pipeline.contract.tasks import IGNORE_INDEX, SEGMENTATION
from pipeline.contract.views import view_mask, view_pixels

log = get_logger(__name__)


class DataError(UserError):
    """A data problem that stops training; one line naming the shard (and sample)."""


class Corrupt(DataError):
    """A sample or shard that cannot be read: '<shard url>: sample <key>: <what>'."""


def choose_view(seed: int, epoch: int, uid: str, k: int) -> int:
    """The view a sample replays in an epoch: uniform over its K views, reseeded every epoch."""
    return derive_seed(seed, uid, f"view/{epoch}") % k


@dataclass(frozen=True)
class Replay:
    """How a stored sample becomes a training item."""
    num_classes: int
    img_size: int
    seed: int
    feature_dim: int | None = None   # read teacher features of this size (feature loss on)
    gpu_decode: bool = False         # hand the JPEG bytes on: decode on the device
    on_corrupt: str = "error"        # 'error' | 'skip'
    task: str = "classification"     # segmentation: the view's mask and dense teacher logits instead of a label

    @property
    def dense(self) -> bool:
        return self.task == SEGMENTATION


def add_counts(total: dict, part: dict) -> dict:
    """Add the per-shard sample counts `part` into `total` (in place); returns `total`."""
    for shard, n in part.items():
        total[shard] = total.get(shard, 0) + n
    return total


class CorruptCounter:
    """Per-reader handling of corrupt data: raise (error) or warn, count the samples lost per shard
    and go on (skip)."""

    def __init__(self, on_corrupt: str, counts: dict | None = None):
        self.skip = on_corrupt == "skip"
        self.counts = counts or {}   # shard url → its sample count (the manifest's), for what a bad shard loses
        self.by_shard: dict[str, int] = {}

    @property
    def count(self) -> int:
        return sum(self.by_shard.values())

    def corrupt(self, message: str, shard: str = "?", samples: int = 1) -> None:
        """`samples` samples of `shard` cannot be used: raise (error), or warn and count them (skip)."""
        if not self.skip:
            raise Corrupt(message)
        self.by_shard[shard] = self.by_shard.get(shard, 0) + samples
        log.warning(f"skipped corrupt data: {message}")

    def unreadable(self, url: str, exn: Exception, read: int = 0) -> None:
        """A shard that cannot be opened or read to its end (truncated, missing, not a tar), after
        `read` of its samples: the rest of its manifest count is lost."""
        lost = self.counts.get(url, 1) - read
        text = str(exn).removeprefix(f"{url}: ")
        self.corrupt(f"{url}: unreadable shard: {text} ({lost} sample(s) lost)", url, max(lost, 1))

    def take(self) -> dict[str, int]:
        """Samples lost per shard since the last call."""
        out, self.by_shard = self.by_shard, {}
        return out


def parse_sample(sample: dict, kind: str, replay: Replay, epoch: int | None) -> dict:
    """One webdataset sample → a training item replaying one view (epoch None: view 0, for val).

    Raises Corrupt naming the shard URL and the sample key."""
    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    try:
        return _parse(sample, kind, replay, epoch, where)
    except Corrupt:
        raise
    except Exception as e:  # a decoder's error on bad bytes: PIL, numpy, json
        text = str(e)
        raise Corrupt(text if text.startswith(where) else f"{where}: {type(e).__name__}: {text}") from None


def _parse(sample: dict, kind: str, replay: Replay, epoch: int | None, where: str) -> dict:
    if M_JSON not in sample:
        raise Corrupt(f"{where}: no {M_JSON} member")
    meta = SampleMeta.from_json(sample[M_JSON], where)
    if meta.uid != sample["__key__"]:
        raise Corrupt(f"{where}: json uid {meta.uid!r} differs from the key")
    if meta.kind != kind:
        raise Corrupt(f"{where}: a {meta.kind!r} sample in a {kind} shard")
    real = kind == "real"
    # segmentation samples carry their labels in the mask: json's label is -1 for every kind
    labelled = real and not replay.dense
    if labelled and not 0 <= meta.label < replay.num_classes or not labelled and meta.label != -1:
        raise Corrupt(f"{where}: label {meta.label} invalid for a {kind} sample of {replay.num_classes} classes")
    k = len(meta.views)
    if k == 0:
        raise Corrupt(f"{where}: no views")
    if replay.dense:
        logits = decode_dense(sample, replay.num_classes, where)          # [K, C, h, w]
    else:
        logits = dense_logits(sample, meta, replay.num_classes, where)    # [K, C]
    if logits.shape[0] != k or not np.isfinite(logits).all():
        raise Corrupt(f"{where}: teacher logits {logits.shape} not finite or not one row per view ({k})")
    v = 0 if epoch is None else choose_view(replay.seed, epoch, meta.uid, k)
    view = list(meta.views[v])
    item = {"uid": meta.uid, "url": sample["__url__"], "view_index": v, "view": view,
            "label": meta.label, "is_real": real}
    # a segmentation sample's dense teacher logits [C, h, w] are `teacher`, a classification one's [C] `logits`
    item["teacher" if replay.dense else "logits"] = torch.from_numpy(logits[v].copy())
    if replay.dense:
        item["mask"] = _view_mask(sample, meta, view, replay, real, where)
    if replay.feature_dim:
        if M_FEATURES not in sample:
            raise Corrupt(f"{where}: no {M_FEATURES} member")
        feats = npy_load(sample[M_FEATURES], where)
        if feats.shape != (k, replay.feature_dim):
            raise Corrupt(f"{where}: features shape {feats.shape}, expected ({k}, {replay.feature_dim})")
        item["features"] = torch.from_numpy(feats[v].astype(np.float32))
    ext = image_member(sample)
    if ext is None:
        raise Corrupt(f"{where}: no image member ({', '.join(IMAGE_FORMATS)})")
    data = sample[ext]
    if replay.gpu_decode:
        item["jpeg"] = _checked_jpeg(data, meta, ext, where)
    else:
        image = decode_image(data)
        if tuple(image.shape[1:]) != (meta.height, meta.width):
            raise Corrupt(f"{where}: image is {image.shape[2]}x{image.shape[1]}, json says {meta.width}x{meta.height}")
        item["pixels"] = view_pixels(image, view, replay.img_size)
    return item


def _view_mask(sample: dict, meta: SampleMeta, view: list, replay: Replay, real: bool, where: str) -> torch.Tensor:
    """The view's mask, uint8 [S, S] (`contract.views.view_mask`, the same box and flip as the pixels), made
    here on the CPU whichever device decodes the image (nearest-neighbour on a PNG: cheap). A mix has no
    mask: all IGNORE_INDEX, so it never reaches the cross-entropy."""
    size = replay.img_size
    if not real:
        return torch.full((size, size), IGNORE_INDEX, dtype=torch.uint8)
    if M_MASK not in sample:
        raise Corrupt(f"{where}: a real segmentation sample with no {M_MASK}")
    mask = decode_mask(sample[M_MASK], where)
    if tuple(mask.shape) != (meta.height, meta.width):
        raise Corrupt(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]}, json says {meta.width}x{meta.height}")
    return view_mask(mask, view, size)


def _checked_jpeg(data: bytes, meta: SampleMeta, ext: str, where: str) -> torch.Tensor:
    """JPEG bytes for device decode, after a header check (cheap: no pixel is decoded here)."""
    from PIL import Image

    if ext != "jpg":
        raise Corrupt(f"{where}: a {ext} image; GPU decode reads JPEG only")
    with Image.open(io.BytesIO(data)) as im:
        if im.format != "JPEG" or im.size != (meta.width, meta.height):
            raise Corrupt(f"{where}: not a {meta.width}x{meta.height} JPEG")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def collate(items: list[dict], skipped: dict[str, int]) -> dict:
    """Items (at least one) → a batch; `skipped`: corrupt samples passed over to fill it, per shard."""
    batch = {
        "uid": [it["uid"] for it in items],
        "url": [it["url"] for it in items],
        "view": [it["view"] for it in items],
        "view_index": torch.tensor([it["view_index"] for it in items], dtype=torch.int64),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.int64),
        "is_real": torch.tensor([it["is_real"] for it in items], dtype=torch.bool),
        "skipped": sum(skipped.values()),
        "skipped_shards": skipped,
    }
    for key in ("logits", "teacher", "mask"):    # logits: classification; teacher and mask: segmentation
        if key in items[0]:
            batch[key] = torch.stack([it[key] for it in items])
    if "features" in items[0]:
        batch["features"] = torch.stack([it["features"] for it in items])
    if "jpeg" in items[0]:
        batch["jpeg"] = [it["jpeg"] for it in items]
    else:
        batch["pixels"] = torch.stack([it["pixels"] for it in items])
    return batch

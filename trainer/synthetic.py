"""A small synthetic release, written as real shards: the fixture of `tsd bench train` and the tests.

Classes are colours; an image is its class colour plus noise, stored as JPEG. The "teacher" scores
each recorded view by the distance of the view's mean colour to every class colour, computed on
the view's pixels exactly as the generation worker would (decode the stored bytes, then
`pipeline.contract.views.view_pixels`), so its logits are informative and depend on the view. Mixes blend two
training images (pixel mixup, generator kind 'mixup') and are scored the same way.

Writes the tar shards and manifest.json with `pipeline.contract` (the format's own writers), as in
docs/FORMAT.md; no index.parquet or card, which the trainer does not read.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pipeline.contract.configlib import to_dict
from pipeline.contract.ids import derive_seed, make_uid, sha256_bytes
from pipeline.contract.images import decode_image, encode_image
from pipeline.contract.layout import shard_name
from pipeline.contract.manifest import write_manifest
from pipeline.contract.samples import M_FEATURES, M_JSON, SampleMeta, encode_teacher, npy_bytes
from pipeline.contract.views import Views, center_view, sample_views, view_pixels

PALETTE = [(0.9, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.2, 0.9), (0.9, 0.9, 0.1),
           (0.8, 0.1, 0.8), (0.1, 0.8, 0.8), (0.95, 0.95, 0.95), (0.05, 0.05, 0.05)]
TEACHER_SIZE = 16        # the synthetic teacher looks at views at this size
SHARPNESS = 12.0         # logit = -SHARPNESS · squared colour distance
FEATURE_DIM = 6          # teacher feature: mean and std of the view's colours


def palette(num_classes: int, seed: int) -> np.ndarray:
    extra = np.random.default_rng(seed).uniform(0.05, 0.95, size=(max(0, num_classes - len(PALETTE)), 3))
    return np.concatenate([np.array(PALETTE[:num_classes]), extra])[:num_classes]


def teacher(image: torch.Tensor, views: list, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits [K, C] and features [K, 6] of the synthetic teacher on each view of a uint8 CHW image."""
    pixels = torch.stack([view_pixels(image, v, TEACHER_SIZE) for v in views]).double()
    mean = pixels.mean(dim=(2, 3)).numpy()
    std = pixels.std(dim=(2, 3)).numpy()
    logits = -SHARPNESS * ((mean[:, None, :] - colours[None, :, :]) ** 2).sum(-1)
    return logits.astype(np.float32), np.concatenate([mean, std], axis=1).astype(np.float32)


def write_release(root, *, classes: int = 4, train_per_class: int = 48, val_per_class: int = 16,
                  mixes: int = 96, views: int = 3, store_size: int = 40, shard_size: int = 32, seed: int = 0,
                  features: bool = False, topk: int | None = None, quality: int = 90,
                  noise: float = 30.0, generator: str = "mixup", real_shards: bool = True) -> Path:
    """Write a release of colour classes under `root`; returns its path. `generator` names the
    mixes' kind; `real_shards=False` writes the mixes only (a release adding mixes to another one
    of the same seed: the same parents, the same teacher)."""
    from PIL import Image

    root = Path(root)
    colours = palette(classes, seed)
    spec = Views(k=views)
    shards, counts, teacher_hits, n_val = [], {}, 0, 0

    def encode(pixels: np.ndarray) -> bytes:
        return encode_image(Image.fromarray(pixels), "jpg", quality)

    def sample(data: bytes, kind: str, split: str, uid: str, label: int, **extra) -> tuple[str, dict, np.ndarray]:
        stored = decode_image(data)  # the teacher sees the stored bytes, decoded
        height, width = stored.shape[1:]
        if split == "val":
            recorded = center_view(width, height, spec)
        else:
            recorded = sample_views(derive_seed(seed, uid, "views"), width, height, views, spec)
        logits, feats = teacher(stored, recorded, colours)
        members, rest = encode_teacher(logits, topk)
        meta = SampleMeta(uid=uid, split=split, kind=kind, label=label, seed=derive_seed(seed, uid),
                          views=recorded, width=width, height=height, topk_rest=rest, **extra)
        members.update({"jpg": data, M_JSON: meta.to_json()})
        if features:
            members[M_FEATURES] = npy_bytes(feats.astype(np.float16))
        return uid, members, logits

    def publish(kind: str, split: str, samples: list) -> None:
        publish_samples(root, kind, split, samples, shard_size, shards, counts)

    def colour_image(label: int, rng: np.random.Generator) -> np.ndarray:
        width = store_size + int(rng.integers(0, store_size // 2 + 1))
        base = colours[label] * 255.0
        pixels = base[None, None, :] + rng.normal(0.0, noise, size=(store_size, width, 3))
        return np.clip(pixels, 0, 255).astype(np.uint8)

    train_images = []
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        samples = []
        for i in range(per_class * classes):
            label = i % classes
            pixels = colour_image(label, np.random.default_rng(derive_seed(seed, f"{split}/{i}", "image")))
            data = encode(pixels)
            uid = make_uid("real", sha256_bytes(data), f"synthetic/{split}/class-{label}/{i:06d}.jpg")
            key, members, logits = sample(data, "real", split, uid, label)
            samples.append((key, members))
            if split == "train":
                train_images.append((uid, pixels))
            else:
                n_val += 1
                teacher_hits += int(logits[0].argmax() == label)
        if real_shards:
            publish("real", split, samples)

    samples = []
    for index, (uid_a, uid_b, weight, pixels) in enumerate(pixel_mixes(train_images, mixes, seed)):
        uid = make_uid("mix", seed, uid_a, uid_b, index)
        key, members, _ = sample(encode(pixels), "mix", "train", uid, -1, parents=(uid_a, uid_b), weight=weight,
                                 generator=generator)
        samples.append((key, members))
    if mixes:
        publish("mix", "train", samples)

    write_manifest(root, {
        "name": "synthetic-colours", "code_version": "tsdistill synthetic",
        "seed": seed,
        "config": {"synthetic": {"classes": classes, "train_per_class": train_per_class,
                                 "val_per_class": val_per_class, "mixes": mixes, "noise": noise}},
        "classes": [f"colour-{i}" for i in range(classes)], "num_classes": classes,
        "image": {"format": "jpg", "quality": quality, "store_size": store_size},
        "views": to_dict(spec),
        "teacher": {"arch": "synthetic-colour-distance", "img_size": TEACHER_SIZE, "mean": [0.0] * 3,
                    "std": [1.0] * 3, "feature_dim": FEATURE_DIM, "logits": "topk" if topk else "full",
                    "topk": topk, "features": features, "weights": None, "head_sha256": None,
                    "val_top1": teacher_hits / max(n_val, 1)},
        "generator": {"kind": generator} if mixes else None,
        "counts": counts,
        "shards": shards,
        "failures": [],
    })
    return root


def pixel_mixes(images: list, n: int, seed: int):
    """n pixel mixups (uid_a, uid_b, weight of a, uint8 pixels) of random pairs of (uid, uint8 HWC) images."""
    from PIL import Image

    rng = np.random.default_rng(derive_seed(seed, "mixes", "plan"))
    for _ in range(n):
        (uid_a, a), (uid_b, b) = (images[j] for j in rng.choice(len(images), 2, replace=False))
        weight = float(rng.uniform(0.25, 0.75))
        b = np.asarray(Image.fromarray(b).resize((a.shape[1], a.shape[0]), Image.BILINEAR), dtype=np.float64)
        yield uid_a, uid_b, weight, np.clip(weight * a + (1 - weight) * b, 0, 255).astype(np.uint8)


def publish_samples(root: Path, kind: str, split: str, samples: list, shard_size: int, shards: list,
                    counts: dict) -> None:
    """Write (key, members) samples as shards of `shard_size`, adding their manifest entries to `shards`, `counts`."""
    from pipeline.contract.shards import publish_shard, tar_bytes

    for number, start in enumerate(range(0, len(samples), shard_size)):
        chunk = samples[start:start + shard_size]
        name = shard_name(kind, split, number)
        stats = publish_shard(root, name, tar_bytes(chunk), {"count": len(chunk)})
        shards.append({"name": name, "kind": kind, "split": split, "count": len(chunk),
                       "bytes": stats["bytes"], "sha256": stats["sha256"]})
    counts[f"{kind}/{split}"] = len(samples)


# --- segmentation: scenes of coloured shapes, the mask from the shapes drawn ---------------------------------------
# Class 0 is the background colour; every scene draws a few rectangles and discs of the other classes. The
# "teacher" labels each cell of its patch grid by the nearest class colour of the view's pixels there (the
# view resized to the grid: `view_pixels`), so it needs no mask and labels mixes as it labels real scenes.
SEG_GRID = 8             # the synthetic teacher's patch grid (h = w)


def seg_teacher(image: torch.Tensor, views: list, colours: np.ndarray, grid: int = SEG_GRID) -> np.ndarray:
    """Dense logits [K, C, grid, grid] of the synthetic teacher on each view of a uint8 CHW image."""
    pixels = torch.stack([view_pixels(image, v, grid) for v in views]).double().numpy()   # [K, 3, g, g]
    distance = ((pixels[:, None] - colours[None, :, :, None, None]) ** 2).sum(2)          # [K, C, g, g]
    return (-SHARPNESS * distance).astype(np.float32)


def seg_scene(colours: np.ndarray, height: int, width: int, rng: np.random.Generator,
              noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [H, W, 3] pixels, uint8 [H, W] mask): shapes of classes 1.. on class 0, plus pixel noise."""
    mask = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(2, 5))):
        label = int(rng.integers(1, len(colours)))
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.15, 0.35) * min(height, width)
        if rng.random() < 0.5:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            inside = (abs(yy - cy) <= r) & (abs(xx - cx) <= 0.8 * r)
        mask[inside] = label
    pixels = colours[mask] * 255.0 + rng.normal(0.0, noise, size=(height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8), mask


def write_seg_release(root, *, classes: int = 3, train: int = 64, val: int = 16, mixes: int = 32, views: int = 2,
                      store_size: int = 40, shard_size: int = 16, seed: int = 0, topk: int | None = None,
                      grid: int = SEG_GRID, noise: float = 20.0, unlabelled: float = 0.05,
                      probe: bool = True) -> Path:
    """Write a segmentation release (manifest task 'segmentation') under `root`; returns its path.

    Real samples carry `mask.png` (a share `unlabelled` of their pixels set to IGNORE_INDEX, as a
    dataset's borders would be); every sample carries the teacher's dense logits per view
    (`encode_dense`, full or `topk`); mixes blend two training scenes and carry no mask. With `probe`,
    `teacher/probe.json` holds the teacher's val mIoU, pixel accuracy and per-class IoU (mask vs its
    dense logits upsampled to the stored image), as the probe writes them."""
    import json

    from PIL import Image

    from pipeline.contract.dense import upsample_logits
    from pipeline.contract.layout import PROBE_METRICS
    from pipeline.contract.masks import store_mask
    from pipeline.contract.miou import confusion, scores
    from pipeline.contract.samples import M_MASK, encode_dense
    from pipeline.contract.tasks import IGNORE_INDEX, SEGMENTATION

    root = Path(root)
    colours = palette(classes, seed)
    spec = Views(k=views)
    shards, counts = [], {}
    teacher_confusion = torch.zeros(classes, classes, dtype=torch.int64)

    def sample(data: bytes, kind: str, split: str, uid: str, mask: np.ndarray | None, **extra):
        stored = decode_image(data)
        height, width = stored.shape[1:]
        recorded = center_view(width, height, spec) if split == "val" \
            else sample_views(derive_seed(seed, uid, "views"), width, height, views, spec)
        logits = seg_teacher(stored, recorded, colours, grid)
        meta = SampleMeta(uid=uid, split=split, kind=kind, label=-1, seed=derive_seed(seed, uid),
                          views=recorded, width=width, height=height, **extra)
        members = dict(encode_dense(logits, topk), jpg=data)
        members[M_JSON] = meta.to_json()
        if mask is not None:
            members[M_MASK] = store_mask(mask, store_size)
        return (uid, members), stored, logits

    train_scenes = []
    for split, n in (("train", train), ("val", val)):
        samples = []
        for i in range(n):
            rng = np.random.default_rng(derive_seed(seed, f"{split}/{i}", "scene"))
            width = store_size + int(rng.integers(0, store_size // 2 + 1))
            pixels, mask = seg_scene(colours, store_size, width, rng, noise)
            mask[rng.random(mask.shape) < unlabelled] = IGNORE_INDEX
            data = encode_image(Image.fromarray(pixels), "jpg", 95)
            uid = make_uid("real", sha256_bytes(data), f"synthetic-seg/{split}/{i:06d}.jpg")
            item, stored, logits = sample(data, "real", split, uid, mask)
            samples.append(item)
            if split == "train":
                train_scenes.append((uid, pixels))
            else:   # the teacher's own val numbers, on the stored image as the probe counts them
                full = upsample_logits(torch.from_numpy(logits[:1]), mask.shape)
                teacher_confusion += confusion(full.argmax(1), torch.from_numpy(mask), classes)
        publish_samples(root, "real", split, samples, shard_size, shards, counts)

    samples = []
    for index, (uid_a, uid_b, weight, pixels) in enumerate(pixel_mixes(train_scenes, mixes, seed)):
        data = encode_image(Image.fromarray(pixels), "jpg", 95)
        item, _, _ = sample(data, "mix", "train", make_uid("mix", seed, uid_a, uid_b, index), None,
                            parents=(uid_a, uid_b), weight=weight, generator="mixup")
        samples.append(item)
    if mixes:
        publish_samples(root, "mix", "train", samples, shard_size, shards, counts)

    teacher_scores = scores(teacher_confusion)
    names = ["background"] + [f"shape-{i}" for i in range(1, classes)]
    if probe:
        (root / PROBE_METRICS).parent.mkdir(parents=True, exist_ok=True)
        (root / PROBE_METRICS).write_text(json.dumps({"val_miou": teacher_scores["miou"],
                                                      "val_pixel_acc": teacher_scores["pixel_acc"],
                                                      "val_per_class_iou": dict(zip(names, teacher_scores["per_class_iou"]))},
                                                     indent=1))
    write_manifest(root, {
        "name": "synthetic-shapes", "code_version": "tsdistill synthetic", "seed": seed,
        "task": SEGMENTATION, "ignore_index": IGNORE_INDEX,
        "config": {"synthetic": {"classes": classes, "train": train, "val": val, "mixes": mixes, "noise": noise}},
        "classes": names, "num_classes": classes,
        "image": {"format": "jpg", "quality": 95, "store_size": store_size},
        "views": to_dict(spec),
        "teacher": {"arch": "synthetic-nearest-colour", "img_size": grid, "mean": [0.0] * 3, "std": [1.0] * 3,
                    "dense": {"grid": [grid, grid], "logits": "topk" if topk else "full", "topk": topk},
                    "features": False, "weights": None, "head_sha256": None,
                    "val_miou": teacher_scores["miou"]},
        "generator": {"kind": "mixup"} if mixes else None,
        "counts": counts, "shards": shards, "failures": [],
    })
    return root


def shards_for(n_images: int, readers: int) -> int:
    """A shard size giving every reader several shards."""
    return max(1, math.ceil(n_images / max(4 * readers, 8)))

"""A tiny segmentation job for the generation tests: procedural scenes with their masks, an index
of task 'segmentation' and a job of tiny random-weight models (the teacher; pixel-space mixes)."""
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.contract.configlib import dump
from pipeline.contract.ids import make_uid, sha256_file
from pipeline.contract.tasks import IGNORE_INDEX, SEGMENTATION
from pipeline.sources.index import write_index
from pipeline.testing.tiny import TinySizes, build_teacher

SEG_CLASSES = ["background", "square", "disc"]


def scene(rng, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [H, W, 3] image, uint8 [H, W] mask): a square and a disc on a noisy background, with a
    1-pixel unlabelled border around the disc."""
    mask = np.zeros((height, width), np.uint8)
    x, y, s = rng.integers(0, width // 2), rng.integers(0, height // 2), rng.integers(8, 16)
    mask[y:y + s, x:x + s] = 1
    yy, xx = np.mgrid[:height, :width]
    cx, cy, r = rng.integers(8, width - 8), rng.integers(8, height - 8), rng.integers(5, 9)
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    mask[d < r] = 2
    mask[(d >= r) & (d < r + 1)] = IGNORE_INDEX
    colours = np.array([[40, 60, 50], [200, 40, 40], [40, 40, 210]], np.float32)
    image = colours[np.where(mask == IGNORE_INDEX, 2, mask)] + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_seg_index(root: Path, n_train: int = 12, n_val: int = 4, seed: int = 0) -> Path:
    """Scenes as PNG pairs under root/source and their index root/ingest/index.parquet."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train + n_val):
        width, height = (48, 40) if i % 2 else (40, 48)
        image, mask = scene(rng, width, height)
        path, mask_path = root / "source" / "images" / f"{i:03d}.png", root / "source" / "masks" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        Image.fromarray(mask, mode="L").save(mask_path)
        rows.append({"uid": make_uid("seg-test", i), "path": str(path), "relpath": path.name, "label": -1,
                     "class_name": "", "split": "train" if i < n_train else "val", "sha256": sha256_file(path),
                     "width": width, "height": height, "mask_path": str(mask_path),
                     "mask_sha256": sha256_file(mask_path), "source_mode": "RGB"})
    index = root / "ingest" / "index.parquet"
    index.parent.mkdir(parents=True, exist_ok=True)
    write_index(index, sorted(rows, key=lambda r: r["uid"]), SEG_CLASSES, {"min_size": 16, "max_pixels": 10**8},
                task=SEGMENTATION)
    return index


def seg_job(root: Path, index: Path, **overrides) -> Path:
    """The job file of a tiny segmentation job (teacher at 56 px: a 4×4 patch grid; mixup mixes)."""
    tiny = TinySizes()
    teacher = build_teacher(root / "models", tiny)
    config = {
        "seed": 0,
        "data": {"index": str(index), "store_size": 40, "image_format": "png"},
        "teacher": {"arch": tiny.teacher_arch, "weights": str(teacher), "img_size": tiny.teacher_img,
                    "model_kwargs": dict(tiny.teacher_kwargs), "batch_size": 64, "dtype": "fp32"},
        "probe": {"views": 2, "epochs": 5, "lr": 0.01, "batch_size": 16},
        "views": {"k": 2, "scale": [0.35, 1.0]},
        "plan": {"pool_size": "0.5x", "pairing": "any", "weight_law": "uniform"},
        "generator": {"kind": "mixup", "size": 48},
        "generate": {"shard_size": 8, "workers": 1, "cpus_per_worker": 1},
        "release": {"name": "seg-test", "license": "cc0-1.0"},
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return dump(config, root / "job.yaml")

"""Development measurement, not a test: the dense teacher encoding (docs/FORMAT.md, "Dense teacher
logits"), full float16 against per-location top-k with the rest mass.

`python bench/measure_dense_encoding.py` prints, per setting (classes C, grid h×w, views K) and per
encoding: bytes per sample (the npy members plus their tar headers, as a shard stores them) and the
distillation loss error of the decoded logits at temperature T, on two kinds of teacher logits:
'random' (i.i.d. normal, σ = 3: a flat, uncertain teacher) and 'peaky' (a spatially smooth class map,
the winning class 8 above the rest, plus σ = 1.5 noise: what a probed teacher's maps look like).
- kl: per-pixel KL(softmax(full/T) ‖ softmax(decoded/T)), mean over pixels;
- kd_rel: |KD(decoded) − KD(full)| / KD(full), KD = T²·KL(teacher_T ‖ student_T) against a random
  student (σ = 2), mean over pixels: how much the stored encoding moves the loss a student sees.
"""
from __future__ import annotations

import io
import sys
import tarfile

import numpy as np

from pipeline.contract.samples import decode_dense, encode_dense

SETTINGS = {   # name: (classes, grid side, views)
    "tiny demo (C=6, 4x4, K=4)": (6, 4, 4),
    "VOC-like (C=21, 16x16, K=10)": (21, 16, 10),
    "ADE20K (C=150, 16x16, K=10)": (150, 16, 10),
}
ENCODINGS = (None, 5, 10, 20)
TEMPERATURES = (1.0, 2.0, 4.0)


def teacher_logits(kind: str, classes: int, side: int, views: int, rng) -> np.ndarray:
    if kind == "random":
        return rng.normal(0, 3, (views, classes, side, side)).astype(np.float32)
    out = rng.normal(0, 1.5, (views, classes, side, side)).astype(np.float32)
    blocks = max(1, side // 4)   # regions of 4×4 locations share a class
    region = rng.integers(classes, size=(views, blocks, blocks)).repeat(side // blocks, 1).repeat(side // blocks, 2)
    np.put_along_axis(out, region[:, None], np.take_along_axis(out, region[:, None], 1) + 8.0, axis=1)
    return out


def tar_size(members: dict) -> int:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"x.{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.tell() - 1024   # without the end-of-archive blocks a shard has once


def log_softmax(z: np.ndarray, t: float) -> np.ndarray:
    z = z.astype(np.float64) / t
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def kl(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    return (np.exp(p_log) * (p_log - q_log)).sum(1)


def measure(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for name, (classes, side, views) in SETTINGS.items():
        for kind in ("random", "peaky"):
            logits = teacher_logits(kind, classes, side, views, rng)
            student = rng.normal(0, 2, logits.shape)
            full = decode_dense(encode_dense(logits, None), classes)   # float16 rounding only
            for k in ENCODINGS:
                if k is not None and k >= classes:
                    continue
                members = encode_dense(logits, k)
                decoded = decode_dense(members, classes)
                row = {"setting": name, "logits": kind, "encoding": "full fp16" if k is None else f"top-{k}",
                       "bytes": tar_size(members)}
                for t in TEMPERATURES:
                    ref, got, s = log_softmax(logits, t), log_softmax(decoded, t), log_softmax(student, t)
                    kd_ref, kd_got = kl(ref, s), kl(got, s)
                    row[f"kl@T{t:g}"] = float(kl(ref, got).mean())
                    row[f"kd_rel@T{t:g}"] = float((np.abs(kd_got - kd_ref) / kd_ref).mean())
                rows.append(row)
            del full
    return rows


def main() -> int:
    rows = measure()
    keys = [k for k in rows[0] if k.startswith(("kl@", "kd_rel@"))]
    print(f"{'setting':<30}{'logits':<8}{'encoding':<11}{'bytes':>9}" + "".join(f"{k:>13}" for k in keys))
    for r in rows:
        print(f"{r['setting']:<30}{r['logits']:<8}{r['encoding']:<11}{r['bytes']:>9,}"
              + "".join(f"{r[k]:>13.2e}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())

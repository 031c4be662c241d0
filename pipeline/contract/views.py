"""Recorded views: how they are drawn, and how a view becomes pixels.

A view is `[x, y, w, h, flip]`, normalised to the stored image. Train samples record K random
resized crops (+ flip); a validation sample records one centred square. `view_pixels` is the one
definition of view → pixels, used by the worker before the teacher and by the trainer before the
student: two copies would drift, and the student would no longer see what the teacher saw.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .configlib import documented, ranged


@dataclass(frozen=True)
class Views:
    """How views are drawn (RandomResizedCrop-style boxes plus a horizontal flip), and how many."""
    k: int = ranged(10, ge=1, doc="recorded views per train sample (real and mix)")
    scale: tuple[float, float] = ranged((0.25, 1.0), gt=0, le=1, ordered=True, doc="area fraction of a crop")
    ratio: tuple[float, float] = ranged((3 / 4, 4 / 3), gt=0, ordered=True, doc="aspect ratio range of a crop")
    flip: bool = documented(True, doc="flip half of the train views horizontally")
    eval_crop: float = ranged(0.875, gt=0, le=1, doc="val: centred square of this fraction of the short side")


def sample_views(seed: int, width: int, height: int, k: int, views: Views) -> list:
    """k train views [x, y, w, h, flip] for a stored image of width×height (deterministic in seed).

    Per view, from a PCG64 stream seeded by `seed`: up to 10 tries of (area fraction, log aspect
    ratio) uniform draws until the box fits, then its x and y (numpy's `integers`), else
    torchvision's fallback (the largest centred box); then a flip draw. `sample_views_many` is this
    for many images at once; this is its one-image case."""
    out = sample_views_many([seed], [width], [height], k, views)[0].tolist()
    return [[*v[:4], int(v[4])] for v in out]


# numpy's SeedSequence and PCG64 seeding constants (numpy/random/bit_generator.pyx, pcg64.h)
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _XSHIFT, _M32 = 0xCA01F9DD, 0x4973F715, 16, 0xFFFFFFFF
_PCG_MULT, _M128 = (2549297995355413924 << 64) + 4865540595714422341, (1 << 128) - 1


def _seed_words(seeds) -> list[np.ndarray]:
    """numpy's SeedSequence(seed).generate_state(4, uint64) as its 8 32-bit words, for many seeds
    (0 <= seed < 2**64) at once."""
    s = np.asarray(seeds, dtype=np.uint64)
    u32 = np.uint32
    lo, hi = (s & np.uint64(_M32)).astype(u32), (s >> np.uint64(32)).astype(u32)
    zero = np.zeros_like(lo)
    hash_const = [_INIT_A]

    def hashmix(value):
        value = value ^ u32(hash_const[0])
        hash_const[0] = (hash_const[0] * _MULT_A) & _M32
        value = value * u32(hash_const[0])
        return value ^ (value >> u32(_XSHIFT))

    with np.errstate(over="ignore"):
        # the entropy is the seed's 32-bit words (one when it fits), the pool 4 words
        pool = [hashmix(lo), hashmix(np.where(hi != 0, hi, zero)), hashmix(zero), hashmix(zero)]
        for i_src in range(4):
            for i_dst in range(4):
                if i_src != i_dst:
                    mixed = u32(_MIX_L) * pool[i_dst] - u32(_MIX_R) * hashmix(pool[i_src])
                    pool[i_dst] = mixed ^ (mixed >> u32(_XSHIFT))
        words, hb = [], _INIT_B
        for i in range(8):
            value = pool[i % 4] ^ u32(hb)
            hb = (hb * _MULT_B) & _M32
            value = value * u32(hb)
            words.append((value ^ (value >> u32(_XSHIFT))).astype(np.uint64))
    return words


def pcg64_raw(seeds, n: int) -> np.ndarray:
    """[len(seeds), n]: the first n outputs of `np.random.PCG64(seed).random_raw()` for each seed.
    Making a PCG64 per seed costs ~12 µs, mostly SeedSequence; here SeedSequence runs vectorised over
    the seeds and one PCG64 is set to each seeded state in turn (~4 µs; tests check it against numpy)."""
    w = [x.tolist() for x in _seed_words(seeds)]
    bits = np.random.PCG64(0)
    out = np.empty((len(w[0]), n), np.uint64)
    for i, words in enumerate(zip(*w)):
        a, b, c, d = (words[2 * j] | (words[2 * j + 1] << 32) for j in range(4))
        inc = ((((c << 64) | d) << 1) | 1) & _M128
        state = (inc + ((a << 64) | b)) & _M128    # PCG64's seeding: step from 0, add the initial state, step
        bits.state = {"bit_generator": "PCG64", "state": {"state": (state * _PCG_MULT + inc) & _M128, "inc": inc},
                      "has_uint32": 0, "uinteger": 0}
        out[i] = bits.random_raw(n)
    return out


_DOUBLE = 1.0 / 9007199254740992.0   # numpy's next_double: (raw >> 11) * 2**-53


class _Streams:
    """One PCG64 stream per seed, consumed exactly as `np.random.Generator(np.random.PCG64(seed))`
    consumes it for `uniform`, `random` (one 64-bit draw each) and `integers(0, n)` (32-bit draws,
    two per 64-bit output, low half first, Lemire's rejection), but for all seeds at once."""

    def __init__(self, seeds, n_raw: int):
        n = len(seeds)
        self.raw = pcg64_raw(seeds, n_raw) if n else np.zeros((0, n_raw), np.uint64)
        self.pos = np.zeros(n, np.int64)
        self.has32 = np.zeros(n, bool)
        self.buf32 = np.zeros(n, np.uint64)
        self.overflow = np.zeros(n, bool)   # ran past n_raw: redone with a longer stream

    def _next64(self, idx):
        pos = self.pos[idx]
        last = self.raw.shape[1] - 1
        self.overflow[idx[pos > last]] = True
        self.pos[idx] = pos + 1
        return self.raw[idx, np.minimum(pos, last)]

    def double(self, idx) -> np.ndarray:
        return (self._next64(idx) >> np.uint64(11)).astype(np.float64) * _DOUBLE

    def _next32(self, idx) -> np.ndarray:
        out = np.empty(len(idx), np.uint64)
        has = self.has32[idx]
        buffered = idx[has]
        out[has] = self.buf32[buffered]
        self.has32[buffered] = False
        fresh = idx[~has]
        raw = self._next64(fresh)
        out[~has] = raw & np.uint64(0xFFFFFFFF)
        self.buf32[fresh] = raw >> np.uint64(32)
        self.has32[fresh] = True
        return out

    def integers(self, idx, high) -> np.ndarray:
        """`integers(0, high)` per index (high >= 1; nothing is drawn where high == 1)."""
        out = np.zeros(len(idx), np.int64)
        draw = np.flatnonzero(high > 1)
        if not len(draw):
            return out
        sub, n = idx[draw], np.asarray(high, np.uint64)[draw]
        m = self._next32(sub) * n
        threshold = (np.uint64(1 << 32) - n) % n
        redo = np.flatnonzero((m & np.uint64(0xFFFFFFFF)) < threshold)
        while len(redo):
            m[redo] = self._next32(sub[redo]) * n[redo]
            redo = redo[(m[redo] & np.uint64(0xFFFFFFFF)) < threshold[redo]]
        out[draw] = (m >> np.uint64(32)).astype(np.int64)
        return out


def sample_views_many(seeds, widths, heights, k: int, views: Views, n_raw: int | None = None) -> np.ndarray:
    """`sample_views` of many images: float64 [N, k, 5], row i the views of (seeds[i], widths[i],
    heights[i]). Vectorised over the images (a plan of a million samples is drawn in seconds); the
    same numbers as drawing each image's views one call at a time (tests check it)."""
    seeds = list(seeds)
    width = np.asarray(widths, np.int64)
    height = np.asarray(heights, np.int64)
    n = len(seeds)
    n_raw = n_raw or 4 * k + 8
    streams = _Streams(seeds, n_raw)
    area = (width * height).astype(np.float64)
    lo_s, hi_s = float(views.scale[0]), float(views.scale[1])
    lo_r, hi_r = math.log(views.ratio[0]), math.log(views.ratio[1])
    boxes = np.zeros((n, k, 4), np.int64)
    flips = np.zeros((n, k), np.int64)
    everyone = np.arange(n)
    for v in range(k):
        pending = everyone
        for _attempt in range(10):
            if not len(pending):
                break
            target = area[pending] * (lo_s + (hi_s - lo_s) * streams.double(pending))
            log_aspect = lo_r + (hi_r - lo_r) * streams.double(pending)
            aspect = np.fromiter(map(math.exp, log_aspect.tolist()), np.float64, len(log_aspect))  # libm's, as before
            w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
            h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
            fits = (w > 0) & (w <= width[pending]) & (h > 0) & (h <= height[pending])
            good = pending[fits]
            x = streams.integers(good, width[good] - w[fits] + 1)
            y = streams.integers(good, height[good] - h[fits] + 1)
            boxes[good, v] = np.stack([x, y, w[fits], h[fits]], axis=1)
            pending = pending[~fits]
        if len(pending):  # torchvision's fallback: the largest centred box within the ratio range
            side = np.maximum(1, np.minimum(width[pending], height[pending]))
            boxes[pending, v] = np.stack([(width[pending] - side) // 2, (height[pending] - side) // 2,
                                          side, side], axis=1)
        if views.flip:
            flips[:, v] = streams.double(everyone) < 0.5
    out = _normalised(boxes, flips, width, height)
    again = np.flatnonzero(streams.overflow)
    if len(again):  # rare: more rejections than the stream held
        out[again] = sample_views_many([seeds[i] for i in again], width[again], height[again], k, views,
                                       n_raw=4 * n_raw)
    return out


def _normalised(boxes: np.ndarray, flips: np.ndarray, width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """[x/W, y/H, w/W, h/H, flip], each rounded as Python's round(value, 6) does: looked up in a
    table per distinct side (numpy's rounding differs from Python's in the last digit at times)."""
    out = np.empty(boxes.shape[:2] + (5,), np.float64)
    for sizes, cols in ((width, (0, 2)), (height, (1, 3))):
        values, inverse = np.unique(sizes, return_inverse=True)
        offsets = np.concatenate([[0], np.cumsum(values + 1)])[:-1]
        table = np.concatenate([_rounded_fractions(int(side)) for side in values.tolist()])
        base = offsets[inverse.reshape(-1)][:, None]
        for c in cols:
            out[:, :, c] = table[base + boxes[:, :, c]]
    out[:, :, 4] = flips
    return out


@functools.lru_cache(maxsize=4096)
def _rounded_fractions(side: int) -> np.ndarray:
    """round(i / side, 6) for i in 0..side (a dataset has few distinct sides: computed once each)."""
    return np.array([round(i / side, 6) for i in range(side + 1)], np.float64)


def center_view(width: int, height: int, views: Views) -> list:
    """The single evaluation view: a centred square, `eval_crop` of the short side."""
    return [_normalise(_center_box(width, height, views.eval_crop), width, height, 0)]


def _center_box(width: int, height: int, fraction: float) -> tuple:
    side = max(1, int(round(min(width, height) * fraction)))
    return ((width - side) // 2, (height - side) // 2, side, side)


def _normalise(box: tuple, width: int, height: int, flip: int) -> list:
    x, y, w, h = box
    return [round(x / width, 6), round(y / height, 6), round(w / width, 6), round(h / height, 6), flip]


def view_box(view: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of a normalised view; never empty, always inside the image."""
    x, y, w, h = view[:4]
    x0 = min(max(int(round(x * width)), 0), width - 1)
    y0 = min(max(int(round(y * height)), 0), height - 1)
    x1 = min(max(int(round((x + w) * width)), x0 + 1), width)
    y1 = min(max(int(round((y + h) * height)), y0 + 1), height)
    return x0, y0, x1, y1


def view_pixels(image, view: Sequence[float], size: int):
    """One view of a uint8 CHW tensor → float CHW tensor in [0, 1] of size×size.

    The one definition of crop → resize (bilinear, antialiased) → flip, used by the worker before
    the teacher and by the trainer before the student. Works on any device."""
    import torch
    import torch.nn.functional as F

    _, height, width = image.shape
    x0, y0, x1, y1 = view_box(view, width, height)
    crop = image[:, y0:y1, x0:x1].unsqueeze(0).float()
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = out.squeeze(0).clamp_(0, 255).div_(255.0)
    if view[4]:
        out = torch.flip(out, dims=[2])
    return out


def view_mask(mask, view: Sequence[float], size: int):
    """One view of a mask (uint8 [H, W] tensor, class ids) → uint8 [size, size]: the same box and
    flip as `view_pixels`, resized by nearest neighbour (pixel centres: `nearest-exact`), so labels
    are never blended. The one definition, used by the trainer and by the probe; works on any device."""
    import torch
    import torch.nn.functional as F

    height, width = mask.shape
    x0, y0, x1, y1 = view_box(view, width, height)
    crop = mask[y0:y1, x0:x1][None, None].float()
    out = F.interpolate(crop, size=(size, size), mode="nearest-exact").squeeze(0).squeeze(0).to(torch.uint8)
    if view[4]:
        out = torch.flip(out, dims=[1])
    return out


def views_mask_batch(mask, views: Sequence[Sequence[float]], size: int):
    """All recorded views of one mask: uint8 [K, size, size]."""
    import torch

    return torch.stack([view_mask(mask, v, size) for v in views])


def views_batch(image, views: Sequence[Sequence[float]], size: int):
    """All recorded views of one image: float [K, 3, size, size] in [0, 1]."""
    import torch

    return torch.stack([view_pixels(image, v, size) for v in views])


def normalize(batch, mean: Sequence[float], std: Sequence[float]):
    """Per-model colour normalisation of a [N, 3, H, W] float batch in [0, 1]."""
    m, s = _mean_std(tuple(float(v) for v in mean), tuple(float(v) for v in std), batch.dtype, batch.device)
    return (batch - m) / s


@functools.lru_cache(maxsize=32)
def _mean_std(mean: tuple, std: tuple, dtype, device):
    """mean/std as [1, C, 1, 1] tensors, made once per (values, dtype, device): built on the device
    at every call, they cost a blocking host→device copy per trainer step, teacher chunk and eval batch."""
    import torch

    def make(values):
        return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1).to(device)

    return make(mean), make(std)

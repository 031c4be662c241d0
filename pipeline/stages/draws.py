"""The draws of a plan: which train images each mix pairs, with which weight; every sample's seed
(from (seed, uid)), stored size and recorded views. Deterministic: the same index, config and seed
draw the same samples."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import JobConfig
from ..contract.configlib import ConfigError
from ..contract.generators import PROMPTED_KINDS
from ..contract.ids import derive_seed, make_uid
from ..contract.images import stored_size
from ..contract.views import center_view, sample_views_many
from .planfile import PlanRow


def geometry_many(job: JobConfig, kind: str, split: str, seeds, sources: list[dict] | None = None) -> tuple:
    """(stored widths, stored heights, recorded views [N, K, 5]) of planned samples: real images from
    their source rows' sizes, mixes from the generator's square output."""
    if kind == "real":
        sizes = [stored_size(r["width"], r["height"], job.data.store_size) for r in sources]
    else:
        sizes = [stored_size(job.generator.size, job.generator.size, job.data.store_size)] * len(seeds)
    widths = np.array([w for w, _ in sizes], np.int64)
    heights = np.array([h for _, h in sizes], np.int64)
    if split == "train":
        views = sample_views_many(seeds, widths, heights, job.views.k, job.views)
    else:
        views = np.array([center_view(w, h, job.views) for w, h in sizes], np.float64).reshape(len(sizes), 1, 5)
    return widths, heights, views


def geometry(job: JobConfig, kind: str, split: str, seed: int, source: dict | None = None) -> tuple[int, int, list]:
    """`geometry_many` of one sample: (stored width, stored height, views as [x, y, w, h, flip] lists)."""
    widths, heights, views = geometry_many(job, kind, split, [seed], [source] if source is not None else None)
    return int(widths[0]), int(heights[0]), [[*v[:4], int(v[4])] for v in views[0].tolist()]


def make_row(job: JobConfig, uid: str, split: str, kind: str, *, label: int, class_name: str | None,
             source: dict | None = None, parents: tuple = (), parent_paths: tuple = (),
             weight: float | None = None, shard: str = "") -> PlanRow:
    """One planned sample (regenerate rebuilds a released one with it): the seed from (seed, uid),
    the stored size and views from `geometry`, a prompted mix's template from `prompt_index`, as
    `write_plan` makes them for all at once."""
    seed = derive_seed(job.seed, uid)
    width, height, views = geometry(job, kind, split, seed, source)
    prompt = prompt_index(job, uid) if kind == "mix" and prompted(job) else None
    return PlanRow(uid=uid, split=split, kind=kind, shard=shard, label=label, class_name=class_name,
                   path=source["path"] if kind == "real" else None, parents=list(parents),
                   parent_paths=list(parent_paths), weight=weight, seed=seed, width=width, height=height,
                   views=views, prompt=prompt, mask_path=source.get("mask_path") if kind == "real" else None)


def prompted(job: JobConfig) -> bool:
    """Whether the job's mixes come from class-name prompts (sd-text) rather than parent pairs."""
    return job.generator is not None and job.generator.kind in PROMPTED_KINDS


def prompt_index(job: JobConfig, uid: str) -> int:
    """The prompt template of a prompted sample: uniform over the templates, from (seed, uid)."""
    return derive_seed(job.seed, uid, "prompt") % len(job.generator.templates)


def draw_classes(job: JobConfig, train: list[dict], num_classes: int, count: int,
                 rng: np.random.Generator) -> np.ndarray:
    """The prompted class of each sample [count] by `plan.class_law`: uniform over the classes, or
    in proportion to each class's train images."""
    if job.plan.class_law == "uniform":
        return rng.integers(num_classes, size=count)
    if any(r["label"] < 0 for r in train):   # a segmentation index: classes are in the masks, not the rows
        raise ConfigError("plan.class_law: 'frequency' counts images per class; a segmentation index has no "
                          "class per image (use 'uniform')")
    freq = np.bincount([r["label"] for r in train], minlength=num_classes).astype(np.float64)
    return rng.choice(num_classes, size=count, p=freq / freq.sum())


def draw_pairs(job: JobConfig, train: list[dict], count: int, rng: np.random.Generator) -> np.ndarray:
    """Parent index pairs [count, 2] by the configured pairing mode (class-agnostic 'any' by default)."""
    labels = np.array([r["label"] for r in train])
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    mode, n = job.plan.pairing, len(train)
    if mode != "any" and (labels < 0).any():   # a segmentation index: no class per image to pair by
        raise ConfigError(f"plan.pairing: {mode!r} pairs by image class; a segmentation index has none (use 'any')")
    if n < 2:
        raise ConfigError(f"plan: mixing needs at least 2 training images, the index has {n}")
    if mode == "cross-class" and len(by_class) < 2:
        raise ConfigError("plan.pairing: 'cross-class' needs at least 2 classes")
    if mode == "same-class" and not any(len(v) >= 2 for v in by_class.values()):
        raise ConfigError("plan.pairing: 'same-class' needs a class with at least 2 images")
    if mode == "any":
        return _any_pairs(rng, n, count)
    pairs = []
    while len(pairs) < count:
        a = int(rng.integers(n))
        if mode == "same-class":
            pool = by_class[labels[a]]
            if len(pool) < 2:
                continue
            b = int(pool[rng.integers(len(pool))])
        else:
            b = int(rng.integers(n))
        if b == a or (mode == "cross-class" and labels[a] == labels[b]):
            continue
        pairs.append((a, b))
    return np.array(pairs, np.int64).reshape(-1, 2)


def _any_pairs(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """What `count` rounds of "a = integers(n); b = integers(n); keep if a != b" draw, in blocks:
    `integers(n, size=m)` consumes the stream exactly as m single calls do. A block drawn past the
    last kept pair is drawn again to exactly where the rounds would have stopped (the weights
    are drawn next, from the same stream)."""
    out, have = [], 0
    while have < count:
        need = count - have
        saved = rng.bit_generator.state
        block = rng.integers(n, size=2 * (need + need // (n - 1) + 16)).reshape(-1, 2)
        keep = block[:, 0] != block[:, 1]
        kept = np.cumsum(keep)
        if kept[-1] >= need:
            used = int(np.searchsorted(kept, need)) + 1
            rng.bit_generator.state = saved
            rng.integers(n, size=2 * used)
            block, keep = block[:used], keep[:used]
        out.append(block[keep])
        have += int(keep.sum())
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def draw_weights(job: JobConfig, rng: np.random.Generator, count: int) -> list[float]:
    """The mixing weight of each pair, in pair order (one draw each, as single calls would)."""
    p = job.plan
    if p.weight_law == "fixed":
        return [p.weight] * count
    if p.weight_law == "beta":
        values = rng.beta(p.beta_a, p.beta_a, size=count)
    else:
        values = rng.uniform(p.weight_range[0], p.weight_range[1], size=count)
    return [round(v, 6) for v in values.tolist()]


@dataclass
class Part:
    """Consecutive planned samples of one (kind, split), numbered into their own shards."""
    kind: str
    split: str
    count: int
    columns: object            # (start, stop) → this part's columns for those rows


def real_part(job: JobConfig, rows: list[dict], split: str, classes: list[str]) -> Part:
    def columns(start, stop):
        chunk = rows[start:stop]
        uids = [r["uid"] for r in chunk]
        seeds = [derive_seed(job.seed, u) for u in uids]
        widths, heights, views = geometry_many(job, "real", split, seeds, chunk)
        labels = [r["label"] for r in chunk]
        # a segmentation row's label is -1 (its classes are in its mask) and it has no class name
        return {"uid": uids, "label": labels, "class_name": [classes[i] if i >= 0 else None for i in labels],
                "path": [r["path"] for r in chunk], "parents": [[]] * len(chunk), "parent_paths": [[]] * len(chunk),
                "weight": [None] * len(chunk), "seed": seeds, "width": widths, "height": heights, "views": views,
                "prompt": [None] * len(chunk), "mask_path": [r.get("mask_path") for r in chunk]}
    return Part("real", split, len(rows), columns)


def mix_part(job: JobConfig, train: list[dict], classes: list[str]) -> Part:
    count = job.plan.resolve_pool(len(train))
    if count == 0:
        return Part("mix", "train", 0, None)
    rng = np.random.Generator(np.random.PCG64(job.seed))
    if prompted(job):
        return prompt_part(job, train, classes, count, rng)
    pairs = draw_pairs(job, train, count, rng)
    weights = draw_weights(job, rng, count)

    def columns(start, stop):
        a, b = pairs[start:stop, 0].tolist(), pairs[start:stop, 1].tolist()
        ua, ub = [train[i]["uid"] for i in a], [train[i]["uid"] for i in b]
        uids = [make_uid("mix", job.seed, x, y, i) for i, (x, y) in enumerate(zip(ua, ub), start)]
        seeds = [derive_seed(job.seed, u) for u in uids]
        widths, heights, views = geometry_many(job, "mix", "train", seeds)
        n = len(uids)
        return {"uid": uids, "label": [-1] * n, "class_name": [None] * n, "path": [None] * n,
                "parents": [list(p) for p in zip(ua, ub)],
                "parent_paths": [[train[i]["path"], train[j]["path"]] for i, j in zip(a, b)],
                "weight": weights[start:stop], "seed": seeds, "width": widths, "height": heights, "views": views,
                "prompt": [None] * n, "mask_path": [None] * n}
    return Part("mix", "train", count, columns)


def prompt_part(job: JobConfig, train: list[dict], classes: list[str], count: int, rng: np.random.Generator) -> Part:
    """A prompted generator's pool: no parents, a class drawn by the configured law and a template
    per sample; label -1 like every generated image, `class_name` = the prompted class."""
    drawn = draw_classes(job, train, len(classes), count, rng)

    def columns(start, stop):
        picked = drawn[start:stop].tolist()
        uids = [make_uid("prompt", job.seed, classes[c], i) for i, c in enumerate(picked, start)]
        seeds = [derive_seed(job.seed, u) for u in uids]
        widths, heights, views = geometry_many(job, "mix", "train", seeds)
        n = len(uids)
        return {"uid": uids, "label": [-1] * n, "class_name": [classes[c] for c in picked], "path": [None] * n,
                "parents": [[]] * n, "parent_paths": [[]] * n, "weight": [None] * n, "seed": seeds,
                "width": widths, "height": heights, "views": views, "prompt": [prompt_index(job, u) for u in uids],
                "mask_path": [None] * n}
    return Part("mix", "train", count, columns)

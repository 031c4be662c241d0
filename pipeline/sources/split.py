"""Classes and the train/val split of ingested rows.

Classes are the label names of the kept rows, sorted (numerically when every name is an integer).
With no `split` given, each class's uids are sorted and a seeded permutation picks
round(val_fraction × n) of them (half rounds up) for val: at least one when the class has two or
more images, and never all of them. Each class has its own random stream, derived from (seed,
class name), so adding images to one class does not move the others' splits.
"""
from __future__ import annotations

import math

import numpy as np

from ..contract.ids import derive_seed
from ..contract.layout import SPLITS
from .lists import is_integer


def sort_classes(names) -> list[str]:
    """Sorted class names; numerically when every name is an integer ('2' before '10')."""
    names = set(names)
    if names and all(is_integer(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def assign_splits(uids_by_class: dict, val_fraction: float, seed: int) -> dict:
    """uid → 'train' | 'val': a seeded, stratified pick of round(val_fraction × n) per class."""
    splits = {}
    for class_name, uids in uids_by_class.items():
        uids = sorted(uids)
        n = len(uids)
        n_val = int(math.floor(val_fraction * n + 0.5))
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)   # every class is evaluated and still trained on
        else:
            n_val = 0 if n < 2 else n_val
        rng = np.random.Generator(np.random.PCG64(derive_seed(seed, class_name, "split")))
        val = {uids[i] for i in rng.permutation(n)[:n_val]}
        splits.update({u: ("val" if u in val else "train") for u in uids})
    return splits


def shared_between_splits(rows: list[dict]) -> int:
    """Distinct file contents present in both train and val: a leak the user should know about."""
    by_split = {s: {r["sha256"] for r in rows if r["split"] == s} for s in SPLITS}
    return len(by_split["train"] & by_split["val"])


def label_and_split(rows: list[dict], classes: list[str], val_fraction: float, seed: int) -> None:
    label_of = {name: i for i, name in enumerate(classes)}
    for row in rows:
        row["label"] = label_of[row["class_name"]]
    assign_missing_splits(rows, val_fraction, seed)


def assign_missing_splits(rows: list[dict], val_fraction: float, seed: int) -> None:
    """Rows without a split get one, stratified by class name (segmentation rows, whose class name is
    "", form one group)."""
    unassigned = {}
    for row in rows:
        if row["split"] is None:
            unassigned.setdefault(row["class_name"], []).append(row["uid"])
    splits = assign_splits(unassigned, val_fraction, seed)
    for row in rows:
        if row["split"] is None:
            row["split"] = splits[row["uid"]]

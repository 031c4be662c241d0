"""The tasks a release can be for, and the one constant of segmentation masks.

Classification is what the paper studies first; semantic segmentation is its second task. A task is
chosen once, at ingest (by the source: a layout with masks is segmentation), recorded in the index
and the manifest, and every later stage asks it here: the probe fits a dense head, the worker stores
masks and dense teacher logits, the trainer refuses a config for the other task.
"""
from __future__ import annotations

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
TASKS = (CLASSIFICATION, SEGMENTATION)

# A mask pixel with no label: never a class, skipped by every loss and metric. Masks are 8-bit PNGs,
# so a segmentation task has at most IGNORE_INDEX classes (0 .. IGNORE_INDEX - 1). ADE20K's "other"
# (0), VOC's border (255) and Cityscapes' non-train ids all become this value at ingest.
IGNORE_INDEX = 255
MAX_SEG_CLASSES = IGNORE_INDEX


def check_task(task: str, where: str = "task") -> str:
    if task not in TASKS:
        raise ValueError(f"{where}: {task!r} is not a task (expected one of {', '.join(TASKS)})")
    return task

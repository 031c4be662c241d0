"""What the stages share for a segmentation job: the job's task (from its index, the one switch),
a source mask read and stored as the release stores it, and the dense encoding the job uses."""
from __future__ import annotations

from ..config import JobConfig
from ..contract.images import stored_size
from ..contract.masks import decode_mask, store_mask
from ..contract.tasks import SEGMENTATION
from ..sources.index import index_task
from ..sources.masks import read_source_mask


def job_task(job: JobConfig) -> str:
    """The task of a job: its index's (set by the source's layout at ingest), never a setting of its
    own; read from the index's schema metadata only."""
    return index_task(job.data.index)


def is_segmentation(job: JobConfig) -> bool:
    return job_task(job) == SEGMENTATION


def stored_mask(job: JobConfig, path, width: int, height: int) -> tuple[bytes, object]:
    """(the mask member's PNG bytes, its uint8 [H, W] tensor) for a source mask whose image is stored
    at width×height; ValueError naming the sizes when the stored mask would not be that size."""
    mask = read_source_mask(path)
    size = stored_size(mask.shape[1], mask.shape[0], job.data.store_size)
    if size != (width, height):
        raise ValueError(f"{path}: mask stored at {size[0]}x{size[1]}, its image at {width}x{height} "
                         f"(source mask {mask.shape[1]}x{mask.shape[0]})")
    data = store_mask(mask, job.data.store_size)
    return data, decode_mask(data, str(path))


def dense_topk(job: JobConfig, num_classes: int) -> int | None:
    """k of the dense teacher logits' per-location top-k, None when stored in full: `generate.logits`
    and `generate.topk` apply per location (a k of at least C stores every class: full)."""
    gen = job.generate
    return gen.topk if gen.logits == "topk" and gen.topk < num_classes else None

"""What the data a compare row reads cost to make: the worker seconds each shard's stats recorded
(`seconds` in `<shard>.stats.json`, written by the shard worker beside the tar), summed over the
shards the row reads and given in hours.

A teacher row pays for the teacher's labels of the real training shards; a mix row adds its share
of the generator's pool: the whole pool's seconds times the fraction of its mixes the row reads
(`data.mix_pool`). The pool's mean rate, not its first shards' own seconds: each worker's first
shard also pays for loading the generator, and the first shards are the ones a fraction reads. The hours are those of whatever device made the shards (a GPU in production, the CPU in the
demo). When a shard's stats record no seconds (releases made before they did, or not by the shard
worker), the hours are unknown and say so: `tsd plan JOB --dry-run` estimates them.
"""
from __future__ import annotations

from pipeline.contract.shards import finished_shards

from .release import ReleaseSet, Shard

RECORDED, UNKNOWN = "recorded shard seconds", "not recorded"


class ShardSeconds:
    """Recorded seconds per shard, each release's stats read once (one listing per shard folder)."""

    def __init__(self):
        self._seconds: dict[tuple[str, str], float | None] = {}

    def __call__(self, shards: list[Shard]) -> float | None:
        """The shards' seconds summed; None when any shard has none recorded."""
        missing: dict[str, list[str]] = {}
        for s in shards:
            if (s.release, s.name) not in self._seconds:
                missing.setdefault(s.release, []).append(s.name)
        for root, names in missing.items():
            found = finished_shards(root, names, keep=lambda stats: stats.get("seconds"))
            for name in names:
                seconds = found.get(name)
                self._seconds[(root, name)] = float(seconds) if isinstance(seconds, (int, float)) else None
        values = [self._seconds[(s.release, s.name)] for s in shards]
        return None if any(v is None for v in values) else sum(values)


def row_hours(seconds: ShardSeconds, releases: ReleaseSet, teacher: bool, generator: str | None,
              pool: float) -> dict:
    """{"hours", "source"}: hours None with source UNKNOWN when a shard recorded no seconds."""
    if not teacher:
        return {"hours": 0.0, "source": "nothing generated"}
    total = seconds(releases.releases[0].shards("real", "train"))   # the teacher's labels
    if generator and total is not None:
        whole = releases.mix_pool([generator], 1.0)
        made = seconds(whole)
        read = sum(s.count for s in releases.mix_pool([generator], pool))
        total = None if made is None else total + made * read / max(1, sum(s.count for s in whole))
    if total is None:
        return {"hours": None, "source": UNKNOWN}
    return {"hours": total / 3600.0, "source": RECORDED}

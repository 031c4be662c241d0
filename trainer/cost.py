"""What the data a compare row reads cost to make: the worker seconds each shard's stats recorded
(`seconds` in `<shard>.stats.json`, written by the shard worker beside the tar), summed over the
shards the row reads and given in hours.

A teacher row pays for the teacher's labels of the real training shards; a mix row adds the shards
of the pool it reads (the first ones, `data.mix_pool`), so the pool-size rows say what each fraction
cost. The hours are those of whatever device made the shards (a GPU in production, the CPU in the
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


def row_shards(releases: ReleaseSet, teacher: bool, generator: str | None, pool: float) -> list[Shard]:
    """The shards whose making a row pays for: none without a teacher; the first release's real
    training shards (the teacher's labels); the part of the generator's pool the row reads."""
    if not teacher:
        return []
    shards = releases.releases[0].shards("real", "train")
    if generator:
        shards = shards + releases.mix_pool([generator], pool)
    return shards


def row_hours(seconds: ShardSeconds, releases: ReleaseSet, teacher: bool, generator: str | None,
              pool: float) -> dict:
    """{"hours", "source"}: hours None with source UNKNOWN when a shard recorded no seconds."""
    shards = row_shards(releases, teacher, generator, pool)
    total = seconds(shards)
    if total is None:
        return {"hours": None, "source": UNKNOWN}
    return {"hours": total / 3600.0, "source": RECORDED if shards else "nothing generated"}

"""What is left to make in a release folder: the shards not finished or stale, and the leftovers of
dead writers and earlier plans (no Ray: `tsd status` and the scale bench ask it too)."""
from __future__ import annotations

from ...contract import storage
from ...contract.layout import SHARD_FOLDERS, SHARD_SUFFIX
from ...contract.shards import IDENTITY_FIELDS, finished_shards, shard_identity, shard_url, stale_reason, stats_url


def pending_shards(release_dir, names: list[str], makers: dict) -> tuple[list[str], dict[str, str]]:
    """(the shards to make, {stale shard: what differs}): a shard is done when it is finished and
    its stats record the identity the shard would have now (`makers`: `JobFolder.makers`); one made
    by another teacher head, weights, generator or plan, or one recording no identity, is stale and
    redone (the stats are small: read them all, concurrently from object storage)."""
    done = finished_shards(release_dir, names, keep=lambda stats: {k: stats[k] for k in IDENTITY_FIELDS if k in stats})
    stale = {n: why for n in names if n in done
             and (why := stale_reason(done[n], shard_identity(n, **makers))) is not None}
    return [n for n in names if n not in done or n in stale], stale


def remove_leftovers(release_dir, planned: list[str]) -> None:
    """Temporary files of local writers that died (their shard is redone), and shards of an earlier
    plan that the current one no longer has (a smaller pool, a larger shard size)."""
    planned = set(planned)
    for prefix in SHARD_FOLDERS:
        folder = storage.join(release_dir, prefix)
        for name in storage.listing(folder):
            if name.startswith(".") and storage.TMP_MARK in name:
                storage.remove(storage.join(folder, name))
            elif name.endswith(SHARD_SUFFIX) and f"{prefix}/{name[:-len(SHARD_SUFFIX)]}" not in planned:
                shard = f"{prefix}/{name[:-len(SHARD_SUFFIX)]}"
                storage.remove(shard_url(release_dir, shard))
                storage.remove(stats_url(release_dir, shard))

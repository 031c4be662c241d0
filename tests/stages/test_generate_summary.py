"""What `tsd generate` prints while and after it runs: an ETA per kind of shard, rounded timings."""
from __future__ import annotations

import pytest

from pipeline.stages.distribute import summary_text
from pipeline.stages.distribute.driver import GenerateSummary, eta_by_kind


def test_the_eta_counts_each_kind_at_its_own_pace():
    # real shards took 2 s, mix shards 30 s: 4 mixes and 10 real shards left, 2 workers
    times = {"real": [2.0, 2.0, 2.0], "mix": [30.0]}
    assert eta_by_kind(times, {"mix": 4, "real": 10}, [], workers=2) == pytest.approx((4 * 30 + 10 * 2) / 2)
    # one overall rate would have said (4 + 10) * mean(2, 2, 2, 30) / 2 = 63 s, not 70 s
    # a running shard counts what it has left of its kind's mean (never below 0)
    assert eta_by_kind(times, {}, [("mix", 10.0), ("real", 5.0)], workers=2) == pytest.approx(20.0 / 2)
    # a kind with no finished shard yet counts at the slowest kind's pace
    assert eta_by_kind({"real": [2.0]}, {"mix": 3}, [], workers=1) == pytest.approx(6.0)
    assert eta_by_kind({}, {"mix": 3}, [], workers=1) is None


def test_the_summary_rounds_its_time():
    s = GenerateSummary(shards=14, skipped=9, redone=2, stale_reasons=(("head sha256 differs", 2),), done=5,
                        samples=160, seconds=51.459999999999994)
    assert summary_text(s) == ("5 shards made, 9 already done, 2 redone (stale: head sha256 differs: 2), "
                               "160 samples, 0 failed samples, 51s")

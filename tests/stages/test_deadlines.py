"""The shard deadline of `tsd generate` and the stragglers its progress line names (no cluster: the
driver's bookkeeping on its own; the kills themselves are in test_generate_faults.py)."""
import io
import time

import pytest

from pipeline.config import GenerateConfig
from pipeline.contract.progress import Progress
from pipeline.stages.distribute.driver import Deadline, Driver, Slot, Task


def test_the_deadline_follows_the_median_shard_time_above_its_floor():
    deadline = Deadline(GenerateConfig(deadline_factor=4.0, deadline_floor_s=30.0))
    assert deadline.shard() == 30.0                      # nothing measured yet: the floor
    for seconds in (10.0, 12.0, 200.0):                  # one slow shard moves the median little
        deadline.add(seconds)
    assert deadline.shard() == pytest.approx(4 * 12.0)
    quick = Deadline(GenerateConfig(deadline_factor=4.0, deadline_floor_s=30.0))
    quick.add(1.0)
    assert quick.shard() == 30.0                         # never below the floor
    fixed = Deadline(GenerateConfig(deadline_s=5.0, deadline_floor_s=30.0))
    fixed.add(100.0)
    assert fixed.shard() == 5.0                          # a configured deadline wins


def test_the_progress_line_names_the_stragglers():
    driver = Driver(None, GenerateConfig(deadline_floor_s=600.0), asked=4, gpu=False, progress=False)
    for seconds in (2.0, 2.0, 3.0):
        driver.deadline.add(seconds)
    now = time.monotonic()
    driver.slots = [Slot(None, now, task=Task(0, "mix/mix-000001"), since=now - 1.0),
                    Slot(None, now, task=Task(0, "mix/mix-000007"), since=now - 50.0),
                    Slot(None, now, task=Task(1, "mix/mix-000003"), since=now - 9.0),
                    Slot(None, now)]                     # idle
    bar = Progress("generate", 10, unit="shards", stream=io.StringIO())
    driver._name_stragglers(bar)
    assert bar.line().endswith("stragglers mix/mix-000007 50s mix/mix-000003 9s")
    driver.slots = driver.slots[:1]                      # the late ones finished
    driver._name_stragglers(bar)
    assert "stragglers" not in bar.line()

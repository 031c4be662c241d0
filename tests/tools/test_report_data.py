"""The report's data from run and compare folders (no release, no browser): a compare's table reads the
metric its results.json ranks by, top-1 for classification (and for results written before
segmentation, which name none), mIoU for segmentation."""
from __future__ import annotations

import pytest
from compare_results import write_compare_folder

from pipeline.contract.errors import UserError
from pipeline.tools.report.data import collect_runs


@pytest.mark.parametrize("metric, key, label", [
    ({"key": "top1", "label": "top-1"}, "top1", "top-1"),
    ({"key": "miou", "label": "mIoU"}, "miou", "mIoU"),
    (None, "top1", "top-1"),   # a results.json from before segmentation
])
def test_a_compare_table_reads_its_tasks_metric(tmp_path, metric, key, label):
    folder = write_compare_folder(tmp_path / "compare", metric, [0.41, 0.45])
    runs, compares = collect_runs([str(folder)], ["a", "b"])
    assert runs == [] and len(compares) == 1
    table = compares[0]
    assert table["metric"] == {"key": key, "label": label, "values": f"val_{key}"}
    # the page reads the seeds' values under the key the metric names
    assert table["rows"][0][table["metric"]["values"]] == [0.41, 0.45]


def test_a_folder_that_is_neither_a_run_nor_a_compare_is_one_line(tmp_path):
    with pytest.raises(UserError, match="neither a run folder"):
        collect_runs([str(tmp_path)], ["a"])

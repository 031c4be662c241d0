"""`tsd compare` on a segmentation release: the paper's rows ranked by mIoU, per seed, with intervals."""
import json

import pytest
import yaml

from trainer_data import SEG_STUDENTS, compare_dict

from trainer.compare import RESULTS_JSON, RESULTS_MD, load_compare, run_compare

pytestmark = pytest.mark.slow


def test_a_segmentation_compare_tabulates_miou_per_seed(seg_release, tmp_path):
    config = compare_dict(seg_release, task="segmentation", student=SEG_STUDENTS["vit-linear"], rows=["finetune", "kd"])
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    results = run_compare(load_compare(path), tmp_path / "out", log=lambda *_: None)
    assert results["metric"] == {"key": "miou", "label": "mIoU"}
    rows = {r["id"]: r for r in results["rows"]}
    assert set(rows) == {"finetune", "kd"}
    for row in rows.values():
        runs = [json.loads((tmp_path / "out" / run / "metrics.json").read_text()) for run in row["runs"]]
        assert row["val_miou"] == [m["val"]["miou"] for m in runs] and len(row["val_miou"]) == 2
        assert row["mean"] == pytest.approx(sum(row["val_miou"]) / 2)
    probe = json.loads((seg_release / "teacher" / "probe.json").read_text())
    assert rows["kd"]["teacher_val_miou"] == pytest.approx(probe["val_miou"])
    assert [(d["row"], d["against"]) for d in results["differences"]] == [("kd", "finetune")]
    text = (tmp_path / "out" / RESULTS_MD).read_text()
    assert "val mIoU (%)" in text and "top-1" not in text
    assert json.loads((tmp_path / "out" / RESULTS_JSON).read_text())["metric"]["key"] == "miou"


def test_a_classification_compare_on_a_segmentation_release_is_one_line(seg_release, tmp_path):
    from pipeline.contract.configlib import ConfigError

    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(compare_dict(seg_release, rows=["finetune"])))
    with pytest.raises(ConfigError, match="is a segmentation release, the config's task is classification"):
        run_compare(load_compare(path), tmp_path / "out", log=lambda *_: None)

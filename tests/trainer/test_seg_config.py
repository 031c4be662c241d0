"""The trainer's task: a config for one task is refused on a release for the other, in one line
naming the release and both tasks; what only one task takes is refused on the other."""
import pytest
import yaml
from trainer_data import seg_config_dict, write_config, write_seg_config

from pipeline.contract.configlib import ConfigError
from trainer.config import load_config


@pytest.mark.parametrize("write, fixture, theirs, ours", [
    (write_config, "seg_release", "segmentation", "classification"),
    (write_seg_config, "release", "classification", "segmentation")])
def test_a_config_is_refused_on_a_release_of_the_other_task(tmp_path, request, write, fixture, theirs, ours):
    release = request.getfixturevalue(fixture)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path / "c.yaml", release))
    message = str(e.value)
    assert "\n" not in message and str(release) in message
    assert f"{theirs} release" in message and f"task is {ours}" in message


def test_a_segmentation_config_on_its_release_loads(tmp_path, seg_release):
    config, releases = load_config(write_seg_config(tmp_path / "s.yaml", seg_release, "smp-fpn"))
    assert config.task == "segmentation" and releases.task == "segmentation"
    assert config.student.decoder == "FPN" and releases.num_classes == 3


@pytest.mark.parametrize("change,key", [
    ({"task": "classification"}, "student.decoder"),                       # a decoder on a classification config
    ({"loss": {"feature_weight": 1.0}}, "loss.feature_weight"),             # the feature loss is classification's
    ({"student": {"decoder": "NoSuchNet"}}, "student.decoder"),
])
def test_what_one_task_takes_is_refused_on_the_other(tmp_path, seg_release, change, key):
    config = seg_config_dict(seg_release, "smp-fpn")
    for section, value in change.items():
        config[section] = dict(config[section], **value) if isinstance(value, dict) else value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)

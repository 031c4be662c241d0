"""Bad job configuration fails before any model loads, with one line naming the file and key."""
import subprocess
import sys

import pytest
import yaml

from pipeline.config import load_job
from pipeline.contract.configlib import ConfigError


@pytest.fixture
def job_yaml(tmp_path, small_job):
    """A valid job manifest (the small release's), copied so each test can break it."""
    data = yaml.safe_load(open(small_job["job_path"]))

    def write(**changes):
        doc = yaml.safe_load(yaml.safe_dump(data))
        for dotted, value in changes.items():
            node, *path = doc, *dotted.split("__")
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path
    return write


@pytest.mark.parametrize("change, expected", [
    ({"plan__pairng": "any"}, "plan.pairng: unknown key"),
    ({"views__k": "three"}, "views.k: expected an integer, got str 'three'"),
    ({"teacher__weights": "/nowhere/dinov2.safetensors"}, "teacher.weights: file not found: /nowhere/dinov2.safetensors"),
    ({"generator__path": "/nowhere/image-mixer"}, "generator.path: file not found"),
    ({"data__classes": ["circle", "hexagon"]}, "data.classes: unknown class 'hexagon'"),
    ({"plan__pairing": "sideways"}, "plan.pairing: 'sideways' is not one of 'any', 'cross-class', 'same-class'"),
    ({"generator__kind": "dall-e"}, "generator.kind: 'dall-e' is not one of"),
    ({"generate__shard_size": 0}, "generate.shard_size: must be >= 1, got 0"),
])
def test_bad_values_are_named(job_yaml, change, expected):
    path = job_yaml(**change)
    with pytest.raises(ConfigError) as err:
        load_job(path)
    message = str(err.value)
    assert message.startswith(str(path)) and expected in message
    assert "\n" not in message


def test_generator_is_required_when_mixes_are_planned(job_yaml, tmp_path):
    path = job_yaml()
    doc = yaml.safe_load(path.read_text())
    del doc["generator"]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="generator: missing"):
        load_job(path)


def test_relative_paths_resolve_against_the_manifest(tmp_path, small_job):
    doc = yaml.safe_load(open(small_job["job_path"]))
    (tmp_path / "sub").mkdir()
    index = tmp_path / "sub" / "index.parquet"
    index.write_bytes(open(doc["data"]["index"], "rb").read())
    doc["data"]["index"] = "sub/index.parquet"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    assert load_job(tmp_path / "job.yaml").data.index == str(index)


def test_cli_fails_fast_on_a_bad_manifest_without_loading_models(job_yaml, tmp_path):
    path = job_yaml(teacher__weights="/nowhere/w.safetensors")
    code = ("import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
            "heavy = [m for m in ('diffusers', 'transformers', 'timm', 'ray') if m in sys.modules]; "
            "print('loaded:', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "generate", str(path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"tsd generate: error: {path}: teacher.weights: file not found: /nowhere/w.safetensors"]
    assert "loaded: []" in proc.stdout

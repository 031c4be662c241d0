"""Every numeric key of the job and train configs has a declared range, checked before anything
loads: a value outside it is one line naming the key and the range. Unknown student architectures and
unreadable weight files are caught by validation too (the teacher's architecture where the teacher is
built, with the same line); docs/CONFIG.md is generated from the same declarations and must be current."""
from __future__ import annotations

import dataclasses
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from pipeline.config import JobConfig
from pipeline.contract.configlib import ConfigError, Range, build, files_optional, load
from pipeline.contract.fielddoc import describe
from pipeline.contract.weights import weights_problem
from trainer.config import TrainConfig
from paths import REPO

MINIMAL = {JobConfig: {"data": {"index": "/data/index.parquet"}, "generator": {"kind": "mixup"},
                       "expected_counts": {"train": 10, "val": 2, "classes": 2}},
           TrainConfig: {"releases": ["/data/release"]}}


def _set(doc: dict, dotted: str, value) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(doc))
    node, *path = doc, *dotted.split(".")
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return doc


def _error(cls, **changes) -> str:
    doc = MINIMAL[cls]
    for dotted, value in changes.items():
        doc = _set(doc, dotted.replace("__", "."), value)
    with files_optional(), pytest.raises(ConfigError) as err:
        build(cls, doc)
    message = str(err.value)
    assert "\n" not in message
    return message


def _numeric_fields(cls, prefix=""):
    """(dotted key, Range, annotation) of every ranged field, walking into nested sections."""
    from typing import get_type_hints

    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        inner = next((a for a in getattr(tp, "__args__", ()) if dataclasses.is_dataclass(a)), tp)
        if dataclasses.is_dataclass(inner):
            yield from _numeric_fields(inner, key)
        elif "range" in f.metadata:
            yield key, f.metadata["range"], f


def _outside(spec: Range, default):
    """A value just outside `spec`, of the field's kind (a pair stays a pair)."""
    if spec.ordered:
        low = spec.ge if spec.ge is not None else (spec.gt if spec.gt is not None else 0.0)
        return [low + 0.2, low + 0.1] if spec.le is None or low + 0.2 <= spec.le else [0.9, 0.1]
    integer = isinstance(default, int) or default is None or isinstance(default, str)
    kind = int if integer else float
    if spec.ge is not None:
        return kind(spec.ge - 1 if integer else spec.ge - 0.5)
    if spec.gt is not None:
        return kind(spec.gt)
    return kind(spec.le + 1) if spec.le is not None else kind(spec.lt)


CASES = [(cls, key, spec, f) for cls in (JobConfig, TrainConfig) for key, spec, f in _numeric_fields(cls)]


@pytest.mark.parametrize("cls, key, spec, f", CASES, ids=[f"{c.__name__}:{k}" for c, k, _, _ in CASES])
def test_every_ranged_key_refuses_a_value_outside_its_range(cls, key, spec, f):
    default = f.default if f.default is not dataclasses.MISSING else 0
    if default is None and "float" in str(f.type):   # an optional float (null = derived): a float value
        default = 0.0
    bad = _outside(spec, default)
    message = _error(cls, **{key.replace(".", "__"): bad})
    assert message == f"{key}: must be {spec}, got {bad!r}"


def test_every_numeric_key_is_ranged():
    """A new int or float key without a declared range fails here (declare one with `ranged`)."""
    missing = []
    for cls in (JobConfig, TrainConfig):
        for section in describe(cls):
            for key in section.keys:
                if key.type.split(" ")[0] in ("int", "float", "[float,") and not key.allowed:
                    missing.append(key.key)
    assert not missing, missing


@pytest.mark.parametrize("cls, change, expected", [
    (JobConfig, {"generate__workers": -2}, "generate.workers: must be >= 1, got -2"),
    (JobConfig, {"teacher__batch_size": -1}, "teacher.batch_size: must be >= 1, got -1"),
    (JobConfig, {"probe__hidden": -5}, "probe.hidden: must be >= 1, got -5"),
    (JobConfig, {"probe__batch_size": 0}, "probe.batch_size: must be >= 1, got 0"),
    (JobConfig, {"probe__lr": -1}, "probe.lr: must be > 0, got -1.0"),
    (JobConfig, {"generate__max_retries": -1}, "generate.max_retries: must be >= 0, got -1"),
    (JobConfig, {"generate__cpus_per_worker": -1}, "generate.cpus_per_worker: must be > 0, got -1.0"),
    (JobConfig, {"plan__weight_range": [0.9, 0.1]},
     "plan.weight_range: must be [min, max], each in [0, 1], min <= max, got [0.9, 0.1]"),
    (JobConfig, {"generator__size": 100}, "generator.size: must be >= 8, a multiple of 8, got 100"),
    (JobConfig, {"plan__pool_size": "lots"}, "plan.pool_size: expected a count or a multiple like '2x', got 'lots'"),
    (JobConfig, {"views__scale": [0.5, 0.2]}, "views.scale: must be [min, max], each in (0, 1], min <= max"),
    (JobConfig, {"generator__dtype": "fp64"}, "generator.dtype: 'fp64' is not one of 'fp32', 'bf16', 'fp16'"),
    (TrainConfig, {"optim__warmup_epochs": 200}, "optim.warmup_epochs: must be in [0, epochs=100], got 200"),
    (TrainConfig, {"student__arch": "resnet_9000"}, "student.arch: unknown timm model 'resnet_9000'"),
    (TrainConfig, {"runtime__checkpoint_minutes": -1}, "runtime.checkpoint_minutes: must be >= 0, got -1.0"),
    (TrainConfig, {"data__on_corrupt": "ignore"}, "data.on_corrupt: 'ignore' is not one of 'error', 'skip'"),
    (TrainConfig, {"loss__temperature": float("nan")}, "loss.temperature: must be > 0, got nan"),
])
def test_the_issues_cases_are_one_line(cls, change, expected):
    assert _error(cls, **change).startswith(expected)


def test_an_unknown_teacher_arch_is_one_line_where_the_teacher_is_built():
    """Loading the config does not ask timm (that imports torch); building the teacher does."""
    from pipeline.models.teacher import describe_backbone

    with files_optional():
        job = build(JobConfig, _set(MINIMAL[JobConfig], "teacher.arch", "not_a_model"))
    with pytest.raises(ConfigError) as err:
        describe_backbone(job.teacher)
    assert str(err.value) == "teacher.arch: unknown timm model 'not_a_model'"


def test_a_range_error_names_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_set(MINIMAL[JobConfig], "generate.workers", -2)))
    with files_optional(), pytest.raises(ConfigError) as err:
        load(JobConfig, path)
    assert str(err.value) == f"{path}: generate.workers: must be >= 1, got -2"


# -- weight files: a header check, no tensor loaded ---------------------------------------------
def _safetensors(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4, 4)}, str(path))
    return path


def test_weight_file_headers(tmp_path):
    import torch

    good = _safetensors(tmp_path / "good.safetensors")
    assert weights_problem(str(good)) is None
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-10])
    assert "truncated or damaged safetensors file" in weights_problem(str(cut))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello, not weights")
    assert "not a safetensors file" in weights_problem(str(junk))
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    assert "not a safetensors file" in weights_problem(str(huge))

    pth = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(3)}, pth)
    assert weights_problem(str(pth)) is None
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    assert weights_problem(str(legacy)) is None
    cut_pth = tmp_path / "cut.pth"
    cut_pth.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    assert "not a complete torch checkpoint" in weights_problem(str(cut_pth))
    folder = tmp_path / "diffusers" / "unet"
    folder.mkdir(parents=True)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(cut.read_bytes())
    assert str(folder / "diffusion_pytorch_model.safetensors") in weights_problem(str(tmp_path / "diffusers"))
    assert zipfile.is_zipfile(pth)


def test_unreadable_weights_are_config_errors(tmp_path):
    junk = tmp_path / "student.safetensors"
    junk.write_bytes(b"\x00" * 64)
    message = _error(TrainConfig, student__weights=str(junk))
    assert message.startswith(f"student.weights: {junk}: not a safetensors file")
    message = _error(JobConfig, teacher__weights=str(junk))
    assert message.startswith(f"teacher.weights: {junk}: not a safetensors file")


# -- docs/CONFIG.md -------------------------------------------------------------------------------
def test_config_doc_is_current():
    from pipeline.tools.configdoc import render

    current = (REPO / "docs" / "CONFIG.md").read_text()
    assert current == render(), "docs/CONFIG.md is stale: run `tsd config-doc --out docs/CONFIG.md`"


def test_config_doc_lists_every_key_with_its_meaning():
    from pipeline.tools.configdoc import render

    text = render()
    for cls in (JobConfig, TrainConfig):
        for section in describe(cls):
            for key in section.keys:
                assert key.meaning, f"{key.key} has no doc= to document it"
                assert f"`{key.key}`" in text
    for needle in ("`data.on_corrupt`", "`runtime.checkpoint_minutes`", "image-mixer, sd-image-variations"):
        assert needle in text


def _config_keys(cls, seen=None) -> dict:
    """Every key field (not a section) of `cls` and of each config dataclass `describe` walks from it
    (its sections, their bases): {'Class.field': field}."""
    import dataclasses
    from typing import get_type_hints

    from pipeline.contract.fielddoc import _strip_optional

    seen = set() if seen is None else seen
    keys = {}
    for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass) or klass in seen:
            continue
        seen.add(klass)
        hints = get_type_hints(klass)
        for f in dataclasses.fields(klass):
            inner = _strip_optional(hints[f.name])
            if dataclasses.is_dataclass(inner):
                keys.update(_config_keys(inner, seen))
            elif f.init:
                keys[f"{klass.__name__}.{f.name}"] = f
    return keys


def test_every_config_key_declares_its_meaning_in_metadata():
    """The meaning of a key is the `doc` its field declares, not a `#` comment the doc generator has to
    parse: a new key without `doc=` fails here."""
    from pipeline.contract.configlib import DOC
    from trainer.compare import CompareConfig

    keys = {}
    for cls in (JobConfig, TrainConfig, CompareConfig):
        keys.update(_config_keys(cls))
    assert {"GeneratorConfig.kinds", "Views.k", "RuntimeConfig.loggers", "CompareConfig.seeds",
            "ExpectedCounts.train"} <= set(keys)
    missing = sorted(name for name, f in keys.items() if not f.metadata.get(DOC))
    assert not missing, f"config keys without doc= in their field's metadata: {missing}"
    generator = next(s for s in describe(JobConfig) if s.key == "generator")   # describe reads it from there
    assert {k.key: k.meaning for k in generator.keys}["generator.steps"] == "denoising steps"


def test_config_doc_command_prints_the_same(tmp_path):
    out = tmp_path / "CONFIG.md"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "config-doc", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == (REPO / "docs" / "CONFIG.md").read_text()


def test_own_data_doc_configs_are_valid(tmp_path):
    """The job manifest and training config of docs/OWN-DATA.md's worked example load with the strict
    loaders (their files need not exist here): the doc cannot drift from the keys."""
    import re

    text = (REPO / "docs" / "OWN-DATA.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    jobs = [b for b in blocks if "generator" in b]
    trains = [b for b in blocks if "releases" in b]
    assert len(jobs) == 1 and len(trains) == 1
    for cls, doc, name in ((JobConfig, jobs[0], "digits.yaml"), (TrainConfig, trains[0], "digits-train.yaml")):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc))
        with files_optional():
            config = load(cls, path)
        assert config is not None
    assert "make_digits.py" in text and "tsd export" in text

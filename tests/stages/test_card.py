"""The release's dataset card: its front matter agrees with the manifest and the index, and Hugging
Face `datasets` loads every config it declares, with the manifest's row counts and typed columns."""
import fnmatch
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.contract.layout import CARD, INDEX, MANIFEST, SPLITS
from pipeline.contract.samples import SampleMeta
from pipeline.stages.card import CARD_CONFIGS, HF_SPLIT, card_configs, dataset_card


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def release_files(root: Path):
    manifest = json.loads((root / MANIFEST).read_text())
    return manifest, pq.read_table(root / INDEX).to_pylist(), front_matter((root / CARD).read_text())


def test_card_configs_splits_and_counts_agree_with_manifest_and_index(small_release):
    root = Path(small_release["root"])
    manifest, index, front = release_files(root)
    assert "&id" not in (root / CARD).read_text()   # no YAML anchors
    configs = {c["config_name"]: c for c in front["configs"]}
    infos = {i["config_name"]: i for i in front["dataset_info"]}
    assert list(configs) == ["real", "mix"] == list(infos)
    assert [c["config_name"] for c in front["configs"] if c.get("default")] == ["real"]
    assert {r["split"] for r in index} == set(SPLITS) == {s["split"] for s in manifest["shards"]}
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tar"))
    for name, config in configs.items():
        info = infos[name]
        splits = {s["name"]: s for s in info["splits"]}
        assert {f["split"] for f in config["data_files"]} == set(splits)
        for files in config["data_files"]:
            split_entry = splits[files["split"]]
            assert set(split_entry) == {"name", "num_bytes", "num_examples"}
            parts = [(k, s) for k, s in CARD_CONFIGS[name] if HF_SPLIT[s] == files["split"]]
            shards = [s for s in manifest["shards"] if (s["kind"], s["split"]) in parts]
            # the glob matches exactly this split's shards
            assert sorted(f for f in on_disk if fnmatch.fnmatch(f, files["path"])) == \
                sorted(s["name"] + ".tar" for s in shards)
            rows = [r for r in index if (r["kind"], r["split"]) in parts]
            assert split_entry["num_examples"] == sum(s["count"] for s in shards) == len(rows) > 0
            assert split_entry["num_examples"] == sum(manifest["counts"][f"{k}/{s}"] for k, s in parts)
            assert split_entry["num_bytes"] == sum(s["bytes"] for s in shards) > 0
        assert info["dataset_size"] == info["download_size"] == sum(s["num_bytes"] for s in info["splits"])
        columns = {f["name"]: f for f in info["features"]}
        assert set(columns) == {"__key__", "__url__", manifest["image"]["format"], "json", "logits.npy"}
        assert [f["name"] for f in columns["json"]["struct"]] == list(SampleMeta.__dataclass_fields__)
        label = next(f for f in columns["json"]["struct"] if f["name"] == "label")
        assert label["dtype"]["class_label"]["names"] == {str(i): c for i, c in enumerate(manifest["classes"])}


def test_configs_follow_what_the_release_holds():
    shard = {"count": 3, "bytes": 100, "sha256": "0" * 64}
    manifest = {"classes": ["a", "b"], "image": {"format": "webp"},
                "teacher": {"logits": "topk", "topk": 1, "features": True}, "shards": [
                    dict(shard, name="real/train-000000", kind="real", split="train"),
                    dict(shard, name="real/val-000000", kind="real", split="val")]}
    configs, infos = card_configs(manifest)
    assert [c["config_name"] for c in configs] == ["real"] and configs[0]["default"]   # no mixes: no mix config
    assert [f["name"] for f in infos[0]["features"]] == ["__key__", "__url__", "webp", "json", "topk_idx.npy",
                                                       "topk_logits.npy", "features.npy"]
    only_mixes = dict(manifest, shards=[dict(shard, name="mix/mix-000000", kind="mix", split="train")])
    configs, infos = card_configs(only_mixes)   # a subset of mixes only
    assert [(c["config_name"], c.get("default")) for c in configs] == [("mix", True)]
    assert infos[0]["splits"] == [{"name": "train", "num_bytes": 100, "num_examples": 3}]


@pytest.fixture(scope="module")
def hf_datasets():
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    return datasets


def test_load_dataset_reads_every_config_with_the_manifest_counts(small_release, hf_datasets, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    root = str(small_release["root"])
    manifest = json.loads((Path(root) / MANIFEST).read_text())
    counts = manifest["counts"]
    cache = str(tmp_path / "hf-cache")
    assert hf_datasets.get_dataset_config_names(root) == ["real", "mix"]
    default = hf_datasets.load_dataset(root, cache_dir=cache)
    real = hf_datasets.load_dataset(root, "real", cache_dir=cache)
    mix = hf_datasets.load_dataset(root, "mix", cache_dir=cache)
    for ds in (default, real):
        assert {s: ds[s].num_rows for s in ds} == {"train": counts["real/train"], "validation": counts["real/val"]}
    assert {s: mix[s].num_rows for s in mix} == {"train": counts["mix/train"]}

    k, c = manifest["views"]["k"], manifest["num_classes"]
    first = mix["train"][0]
    meta = first["json"]
    assert first["__key__"] == meta["uid"] and meta["kind"] == "mix" and meta["label"] == -1
    assert len(meta["parents"]) == 2 and 0 <= meta["weight"] <= 1 and meta["generator"] == "image-mixer"
    val = real["validation"][0]
    assert val["json"]["split"] == "val" and val["json"]["weight"] is None and val["json"]["parents"] == []
    assert real["train"].features["json"]["label"].names == manifest["classes"]
    assert val["jpg"].size == (val["json"]["width"], val["json"]["height"])
    logits = real["train"].with_format("numpy", columns=["logits.npy"], dtype="float16")[0]["logits.npy"]
    assert logits.shape == (k, c) and logits.dtype.name == "float16"
    assert len(val["logits.npy"]) == 1   # one centred view


def test_card_text_names_the_split_mapping(small_release):
    text = dataset_card(json.loads((Path(small_release["root"]) / MANIFEST).read_text()))
    assert "`validation` is tsdistill's split `val`" in text


@pytest.mark.parametrize("scheduler, steps, says", [("ldm-ddim", 30, "LDM-DDIM 31 denoising steps (steps: 30)"),
                                                    ("ldm-ddim-fork", 30, "LDM-DDIM-FORK 30 denoising steps,"),
                                                    ("ddim", 50, "DDIM 50 denoising steps,")])
def test_card_states_the_denoising_steps_that_ran(small_release, scheduler, steps, says):
    """ldm's DDIM runs its own table: steps=30 is 31 UNet steps, and the card says what ran."""
    manifest = json.loads((Path(small_release["root"]) / MANIFEST).read_text())
    manifest["generator"] = dict(manifest["generator"], kind="image-mixer", scheduler=scheduler, steps=steps)
    assert says in dataset_card(manifest)

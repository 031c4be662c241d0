"""The dataset card (README.md of a release), in the Hugging Face dataset-card style.

The front matter is what `datasets.load_dataset(RELEASE[, CONFIG])` reads (webdataset builder):
- one config per kind: `real` (train, validation; the default) and `mix` (train), so the two kinds
  never share a split and an Arrow schema;
- `dataset_info.features` declared for every config: without it the builder infers the schema from
  the first samples, where a real sample's null `weight`/`generator`/`parents` type those columns
  `null` and the first mix then fails to cast (huggingface/datasets#7549);
- every split entry with `name`, `num_bytes` and `num_examples` (an entry missing one is dropped
  silently, and the row counts would go unchecked). `num_bytes` is the split's tar bytes from the
  manifest: `datasets` only uses it for a free-space check;
- split names: the format says `val` (file names, json, index, manifest); the Hub's canonical name
  is `validation`. `HF_SPLIT` maps them, here and nowhere else.
The card is made from the manifest alone (no `datasets` import).
"""
from __future__ import annotations

import copy

import yaml

from ..contract.generators import DIFFUSION_KINDS
from ..contract.layout import SHARD_PREFIX, SHARD_SUFFIX
from ..contract.manifest import manifest_task
from ..contract.samples import (M_DENSE_LOGITS, M_DENSE_REST, M_DENSE_TOPK_IDX, M_DENSE_TOPK_LOGITS, M_FEATURES,
                                M_JSON, M_LOGITS, M_MASK, M_TOPK_IDX, M_TOPK_LOGITS)
from ..contract.tasks import SEGMENTATION
from ..models.ldm_ddim import unet_steps


def sampler(g: dict) -> str:
    """The sampler as run: ldm's DDIM runs its own table (steps=30 is 31 denoising steps)."""
    ran = unet_steps(g["scheduler"], g["steps"])
    return f"{g['scheduler'].upper()} {ran} denoising steps" + (f" (steps: {g['steps']})" if ran != g["steps"] else "")

# tsdistill split → Hugging Face split name on the card
HF_SPLIT = {"train": "train", "val": "validation"}
# card config → the (kind, split) shards it holds; `real` first: datasets infers the builder
# (webdataset) from the first config's files, and real shards always exist
CARD_CONFIGS = {"real": (("real", "train"), ("real", "val")), "mix": (("mix", "train"),)}
DEFAULT_CONFIG = "real"

# the `json` member (contract.samples.SampleMeta), field by field; `label` is filled per release
JSON_FIELDS = {
    "uid": {"dtype": "string"},
    "split": {"dtype": "string"},                 # the format's name: train | val
    "kind": {"dtype": "string"},
    "label": None,                                # class_label over manifest.classes; -1 for mixes
    "seed": {"dtype": "int64"},
    "views": {"list": {"list": "float64"}},       # K × [x, y, w, h, flip]; float64 keeps round(x·W) exact
    "width": {"dtype": "int32"},
    "height": {"dtype": "int32"},
    "parents": {"list": "string"},                # [] for real samples
    "weight": {"dtype": "float64"},               # null for real samples
    "generator": {"dtype": "string"},             # null for real samples
    "topk_rest": {"list": "float64"},             # null unless teacher.logits is topk
    "prompt_class": {"dtype": "string"},          # text-prompted mixes (sd-text) only: the prompted class
    "prompt": {"dtype": "string"},                # and the prompt
}


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    for bound, name in bounds:
        if n < bound:
            return name
    return "n>100M"


def _nested(depth: int, dtype: str) -> dict:
    """A `datasets` nested list of `depth` levels of `dtype`."""
    return {"list": dtype if depth == 1 else _nested(depth - 1, dtype)}


def card_features(manifest: dict, config: str = DEFAULT_CONFIG) -> list[dict]:
    """The columns a config yields, in the `datasets` YAML form.

    npy members are lists of lists ([K, ·]; K is 1 for val, K for train, so never a fixed shape).
    Segmentation: the `real` config also yields the mask (an image: 8-bit grey PNG of class ids), and
    the teacher's members are dense, [K, C, h, w] (full) or [K, k, h, w] and [K, h, w] (top-k)."""
    label = {"class_label": {"names": {str(i): name for i, name in enumerate(manifest["classes"])}}}
    meta = [{"name": name, **(spec or {"dtype": label})} for name, spec in JSON_FIELDS.items()]
    teacher = manifest["teacher"]
    features = [{"name": "__key__", "dtype": "string"},   # the uid
                {"name": "__url__", "dtype": "string"},   # the tar (declared: datasets 3.x streaming needs it)
                {"name": manifest["image"]["format"], "dtype": "image"},
                {"name": M_JSON, "struct": meta}]
    if manifest_task(manifest) == SEGMENTATION:
        if config == "real":
            features.append({"name": M_MASK, "dtype": "image"})
        if manifest["dense"]["logits"] == "topk":
            features += [{"name": M_DENSE_TOPK_IDX, **_nested(4, "uint8" if manifest["num_classes"] <= 256 else "int16")},
                         {"name": M_DENSE_TOPK_LOGITS, **_nested(4, "float16")},
                         {"name": M_DENSE_REST, **_nested(3, "float16")}]
        else:
            features.append({"name": M_DENSE_LOGITS, **_nested(4, "float16")})
    elif teacher["logits"] == "topk":
        features += [{"name": M_TOPK_IDX, "list": {"list": "int32"}},
                     {"name": M_TOPK_LOGITS, "list": {"list": "float16"}}]
    else:
        features.append({"name": M_LOGITS, "list": {"list": "float16"}})
    if teacher.get("features"):
        features.append({"name": M_FEATURES, "list": {"list": "float16"}})
    return features


def card_configs(manifest: dict) -> tuple[list[dict], list[dict]]:
    """(configs, dataset_info) of the front matter, from the manifest's shards.

    A config with no shard at all (no mixes, or a subset) is left out, since its glob would match
    nothing and `load_dataset` would fail on it; a split with no shard likewise. The default is
    `real`, or the first config left."""
    configs, infos = [], []
    for name, parts in CARD_CONFIGS.items():
        features = card_features(manifest, name)
        files, splits = [], []
        for kind, split in parts:
            shards = [s for s in manifest["shards"] if (s["kind"], s["split"]) == (kind, split)]
            if not shards:
                continue
            files.append({"split": HF_SPLIT[split], "path": SHARD_PREFIX[(kind, split)] + "-*" + SHARD_SUFFIX})
            splits.append({"name": HF_SPLIT[split], "num_bytes": sum(s["bytes"] for s in shards),
                           "num_examples": sum(s["count"] for s in shards)})
        if not files:
            continue
        configs.append({"config_name": name, "data_files": files})
        size = sum(s["num_bytes"] for s in splits)
        # a copy per config: PyYAML would otherwise write &id001 / *id001 anchors
        infos.append({"config_name": name, "features": copy.deepcopy(features), "splits": splits,
                      "download_size": size, "dataset_size": size})
    if configs:
        default = next((c for c in configs if c["config_name"] == DEFAULT_CONFIG), configs[0])
        default["default"] = True
    return configs, infos


def adaptation(teacher: dict) -> str:
    """How the teacher was adapted to the task, in words."""
    tuned = (teacher.get("adaptation") or {}).get("tuned")
    if (teacher.get("adaptation") or {}).get("mode") == "finetune":
        return f"finetuned ({', '.join(tuned)} and a {teacher['head']} head)"
    return f"probed {teacher['head']} head"


def missing_section(manifest: dict) -> str:
    """The card's account of shards released without (`tsd release --allow-missing`); '' when none."""
    missing = manifest.get("missing")
    if not missing:
        return ""
    rows = "\n".join(f"| {s['name']} | {s['planned']} |" for s in missing["shards"])
    return f"""
**Incomplete release**: {len(missing['shards'])} planned shard(s) failed to generate and were released
without (`tsd release --allow-missing`); their {missing['samples']} planned samples are in neither the
shards, the counts above nor `index.parquet`. `manifest.json` lists them under `missing`.

| missing shard | planned samples |
| --- | --- |
{rows}
"""


def segmentation_section(manifest: dict) -> str:
    """What a segmentation release adds: masks on real samples, dense teacher logits per view."""
    dense = manifest["dense"]
    h, w = dense["grid"]
    stored = (f"per location the top {dense['topk']} classes (`{M_DENSE_TOPK_IDX}`, `{M_DENSE_TOPK_LOGITS}`) "
              f"and the rest of the probability mass (`{M_DENSE_REST}`)" if dense["logits"] == "topk"
              else f"all classes, float16 (`{M_DENSE_LOGITS}`, [K, C, {h}, {w}])")
    return f"""
**Semantic segmentation.** Each real image carries its mask (`{M_MASK}`: 8-bit grey PNG at the stored
image's size, pixel values the class ids 0..{manifest['num_classes'] - 1}, {manifest['ignore_index']} = no label);
SD-Mixup images carry none. The teacher's outputs are dense: for each recorded view, logits at its
{h}×{w} patch grid, {stored}; cut the mask with the view's box and flip (nearest) to compare them.
"""


def dataset_card(manifest: dict) -> str:
    counts = manifest["counts"]
    total = sum(counts.values())
    seg = manifest_task(manifest) == SEGMENTATION
    configs, infos = card_configs(manifest)
    front = {
        "license": manifest["config"]["release"]["license"],
        "task_categories": ["image-segmentation" if seg else "image-classification"],
        "size_categories": [size_category(total)],
        "tags": ["knowledge-distillation", "sd-mixup", "synthetic", "webdataset", "tsdistill"],
        "configs": configs,
        "dataset_info": infos,
    }
    t, g = manifest["teacher"], manifest["generator"]
    gen_line = "none (no mixes)" if not g else (
        f"`{g['kind']}`" + (f", {g['size']} px, {sampler(g)}, guidance {g['guidance']}"
                            if g["kind"] in DIFFUSION_KINDS else ", pixel space"))
    rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items())
    names = ", ".join(f"`{c['config_name']}`" for c in configs)
    npy = ", ".join(f"`{f['name']}`" for f in card_features(manifest) if f["name"].endswith(".npy"))
    if seg:
        logits_member = M_DENSE_TOPK_LOGITS if manifest["dense"]["logits"] == "topk" else M_DENSE_LOGITS
        score = f"validation mIoU {t['val_miou']:.3f}" if t.get("val_miou") is not None else "validation mIoU not measured"
    else:
        logits_member = M_TOPK_LOGITS if t["logits"] == "topk" else M_LOGITS
        score = f"validation top-1 {t['val_top1']:.3f}"
    missing = missing_section(manifest)
    seg_section = segmentation_section(manifest) if seg else ""
    return f"""---
{yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip()}
---

# {manifest['name']}

{manifest['config']['release'].get('description') or 'A task-specific distillation dataset made with tsdistill.'}

Real images of {manifest['num_classes']} classes and SD-Mixup images (two real training images mixed
by an image-variation diffusion model, class-agnostic and prompt-free, after Marrie et al., TMLR 2024),
each with the outputs of a probed teacher on {manifest['views']['k']} recorded views (crop box + flip),
so a student can be distilled from them without running the teacher.
{seg_section}
## Contents

| kind/split | samples |
| --- | --- |
{rows}
{missing}
Shards are WebDataset tars (`real/train-*.tar`, `real/val-*.tar`, `mix/mix-*.tar`); the format is
documented in the tsdistill repository (`docs/FORMAT.md`, format version {manifest['format_version']}).
`index.parquet` has one row per sample; `manifest.json` lists every shard with its sha256.

## Loading with `datasets`

Configs: {names}. `real` holds the real images (splits `train` and `validation`), `mix` the SD-Mixup
images (split `train`, `json.label` -1: they carry only the teacher's outputs).

```python
from datasets import load_dataset
real = load_dataset("RELEASE")          # the default config, `real`: train + validation
mix = load_dataset("RELEASE", "mix")    # train only
x = real["train"].with_format("numpy", columns=["{logits_member}"], dtype="float16")[0]["{logits_member}"]   # [K, ·]
```

- Split names: the Hugging Face split `validation` is tsdistill's split `val` (`real/val-*.tar`,
  `json.split == "val"`, `index.parquet` and `manifest.json` say `val`); `train` is `train`.
- Columns: `__key__` (the uid), `__url__`, the image, `json` (the sample's metadata, typed) and {npy}
  (one row per recorded view).
- `num_bytes` counts the shards' tar bytes, not Arrow bytes.
- Passing `data_files=` to `load_dataset` bypasses these declared features: pass
  `features=load_dataset_builder("RELEASE", "real").info.features` with it.

## How it was generated

- code: {manifest['code_version']}; global seed {manifest['seed']}
- teacher: `{t['arch']}` at {t['img_size']} px, {adaptation(t)} ({score});
  weights sha256 `{t['weights']['sha256']}`, head sha256 `{t['head_sha256']}`
- generator: {gen_line}
- stored images: {manifest['image']['format']} q{manifest['image']['quality']}, short side at most {manifest['image']['store_size']} px
- teacher outputs: {t['logits']} logits{' (top-' + str(t['topk']) + ')' if t['topk'] else ''}, float16{', with features' if t['features'] else ''}

## How to rebuild it

With the same source images, model weights (checked against the sha256 above) and the job config
embedded in `manifest.json`:

```
tsd ingest SOURCE --out work/ingest
tsd probe job.yaml --out RELEASE && tsd plan job.yaml --out RELEASE
tsd generate job.yaml --out RELEASE && tsd release job.yaml --out RELEASE
tsd verify RELEASE
```

`tsd regenerate RELEASE --uid UID` rebuilds one sample and compares it with the stored one.

## What is not deterministic

Every random choice derives from (global seed, sample uid), never from scheduling, and tar headers
are fixed, so a rerun on the same hardware and software (the same CPU or GPU model, drivers, library
versions and thread counts) is byte-identical. On another CPU or GPU, floating-point kernels differ
(instruction sets, oneDNN, BLAS and cuDNN paths, bf16/fp16 rounding): generated pixels and the
teacher's logits can differ in their last bits, and so can JPEG bytes downstream and the weights of a
student trained on them. What depends on no float kernel is the same everywhere: the plan (pairs,
mixing weights, seeds, views), sample uids, labels and the tar layout. `tsd regenerate --pixel-tol N
--logit-tol X` compares a rebuilt sample within such tolerances.
"""

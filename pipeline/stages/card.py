"""The dataset card (README.md of a release), in the Hugging Face dataset-card style."""
from __future__ import annotations

import yaml

from ..models.registry import DIFFUSION_KINDS


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    for bound, name in bounds:
        if n < bound:
            return name
    return "n>100M"


def dataset_card(manifest: dict) -> str:
    counts = manifest["counts"]
    total = sum(counts.values())
    front = {
        "license": manifest["config"]["release"]["license"],
        "task_categories": ["image-classification"],
        "size_categories": [size_category(total)],
        "tags": ["knowledge-distillation", "sd-mixup", "synthetic", "webdataset", "tsdistill"],
        "configs": [{"config_name": "default", "data_files": [
            {"split": "train", "path": ["real/train-*.tar", "mix/mix-*.tar"]},
            {"split": "validation", "path": "real/val-*.tar"}]}],
        "dataset_info": {"splits": [
            {"name": "train", "num_examples": counts["real/train"] + counts["mix/train"]},
            {"name": "validation", "num_examples": counts["real/val"]}]},
    }
    t, g = manifest["teacher"], manifest["generator"]
    gen_line = "none (no mixes)" if not g else (
        f"`{g['kind']}`" + (f", {g['size']} px, {g['scheduler'].upper()} {g['steps']} steps, guidance {g['guidance']}"
                            if g["kind"] in DIFFUSION_KINDS else ", pixel space"))
    rows = "\n".join(f"| {k} | {v} |" for k, v in counts.items())
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {manifest['name']}

{manifest['config']['release'].get('description') or 'A task-specific distillation dataset made with tsdistill.'}

Real images of {manifest['num_classes']} classes and SD-Mixup images (two real training images mixed
by an image-variation diffusion model, class-agnostic and prompt-free, after Marrie et al., TMLR 2024),
each with the outputs of a probed teacher on {manifest['views']['k']} recorded views (crop box + flip),
so a student can be distilled from them without running the teacher.

## Contents

| kind/split | samples |
| --- | --- |
{rows}

Shards are WebDataset tars (`real/train-*.tar`, `real/val-*.tar`, `mix/mix-*.tar`); the format is
documented in the tsdistill repository (`docs/FORMAT.md`, format version {manifest['format_version']}).
`index.parquet` has one row per sample; `manifest.json` lists every shard with its sha256.

## How it was generated

- code: {manifest['code_version']}; global seed {manifest['seed']}
- teacher: `{t['arch']}` at {t['img_size']} px, probed {t['head']} head (validation top-1 {t['val_top1']:.3f});
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
are fixed, so a rerun on the same hardware and software is byte-identical (verified on CPU). On GPUs,
kernels differ between models, drivers and library versions (and bf16/fp16 rounding with them):
generated pixels and teacher logits can differ slightly there, and so can JPEG bytes downstream.
"""

"""The generator kinds: every kind's name, what it needs, and where its code lives.

A kind's name is part of the contract: a release's manifest records it (`generator.kind`) and a
family of releases keeps each kind's mixes under `generators/<kind>/`. Light (a table of strings):
the job config, `tsd plan --dry-run`, the dataset card and `tsd convert` ask it without loading a
model; `pipeline.models.build.build_generator` imports the implementation when a worker makes mixes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GeneratorKind:
    name: str
    implementation: str          # 'module:Class', imported by `build_generator`
    diffusion: bool              # needs a model folder (`generator.path`) and GPU time
    ldm_checkpoint: bool = False  # `tsd convert` turns the original single-file checkpoint into its folder
    prompted: bool = False       # makes images from a class-name prompt, not from two parents
    summary: str = ""


_ALL = (
    GeneratorKind("image-mixer", "pipeline.models.generators:ImageMixer", diffusion=True, ldm_checkpoint=True,
                  summary="the paper's SD-Mixup: ImageMixer, CLIP image embeddings of both parents as tokens"),
    GeneratorKind("sd-image-variations", "pipeline.models.generators:ImageVariations", diffusion=True,
                  ldm_checkpoint=True, summary="SD image variations: one token, the interpolated embedding"),
    GeneratorKind("unclip", "pipeline.models.generators:UnCLIP", diffusion=True,
                  summary="Stable unCLIP 2.1: the interpolated embedding, noised, as the UNet's class labels"),
    GeneratorKind("mixup", "pipeline.models.generators:PixelMixup", diffusion=False,
                  summary="pixel-space mixup (Zhang et al. 2018)"),
    GeneratorKind("cutmix", "pipeline.models.generators:PixelCutmix", diffusion=False,
                  summary="CutMix (Yun et al. 2019)"),
    GeneratorKind("sd-text", "pipeline.models.sd_text:TextToImage", diffusion=True, prompted=True,
                  summary="the baseline SD-Mixup answers: Stable Diffusion text-to-image from class-name prompts"),
)
GENERATORS: dict[str, GeneratorKind] = {g.name: g for g in _ALL}
KINDS: tuple[str, ...] = tuple(GENERATORS)
DIFFUSION_KINDS: tuple[str, ...] = tuple(g.name for g in _ALL if g.diffusion)
LDM_KINDS: tuple[str, ...] = tuple(g.name for g in _ALL if g.ldm_checkpoint)
PROMPTED_KINDS: tuple[str, ...] = tuple(g.name for g in _ALL if g.prompted)

CLASS_FIELD = "{class}"   # where a prompt template takes the class name


def prompt_name(class_name: str) -> str:
    """How a class is named in a prompt: the dataset's folder-style name read as words (CUB's
    `001.Black_footed_Albatross` → `Black footed Albatross`: a leading number and dot before a
    non-digit dropped, underscores as spaces)."""
    return re.sub(r"^\d+\.(?=\D)", "", class_name).replace("_", " ").strip() or class_name


def render_prompt(template: str, class_name: str) -> str:
    """A prompted generator's text: the template with its class field replaced by `prompt_name` (no
    other formatting, so braces elsewhere in a template stay as written)."""
    return template.replace(CLASS_FIELD, prompt_name(class_name))


def generator_kind(name: str) -> GeneratorKind:
    if name not in GENERATORS:
        raise ValueError(f"generator.kind: unknown generator {name!r} (known: {', '.join(KINDS)})")
    return GENERATORS[name]


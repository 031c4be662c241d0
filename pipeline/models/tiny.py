"""Tiny random-weight models of the real architectures, saved in the real on-disk layouts.

Nothing can be downloaded at run time, so the demo and the tests build these, write them to disk
and load them back through the very loaders real weights use (timm's `pretrained_cfg_overlay`
file loading, diffusers/transformers `from_pretrained` on a local folder).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class TinySizes:
    teacher_arch: str = "vit_small_patch14_dinov2"     # DINOv2-style ViT, patch 14
    teacher_kwargs: dict = field(default_factory=lambda: {"embed_dim": 192, "depth": 2, "num_heads": 3})
    teacher_img: int = 56
    clip_dim: int = 32                                  # CLIP projection dim = UNet cross-attention dim
    clip_img: int = 32
    unet_channels: tuple = (32, 64)
    vae_channels: tuple = (16, 32, 32, 32)              # 4 blocks: the SD latent factor of 8
    student_arch: str = "resnet10t"


def _done(folder: Path, sizes: TinySizes) -> bool:
    marker = folder / "tiny.json"
    return marker.is_file() and json.loads(marker.read_text()) == _describe(sizes)


def _describe(sizes: TinySizes) -> dict:
    d = {k: getattr(sizes, k) for k in sizes.__dataclass_fields__}
    return json.loads(json.dumps(d))


def build_teacher(folder: Path, sizes: TinySizes, seed: int = 0) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(sizes.teacher_arch, pretrained=False, num_classes=0,
                              img_size=sizes.teacher_img, **sizes.teacher_kwargs)
    path = folder / "teacher" / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def build_student(folder: Path, sizes: TinySizes, seed: int = 0) -> Path:
    """A random 'pretrained' student checkpoint, so the demo exercises loading from a file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed + 2)
    model = timm.create_model(sizes.student_arch, pretrained=False)
    path = folder / "student" / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def build_image_mixer(folder: Path, sizes: TinySizes, seed: int = 0) -> Path:
    """A diffusers folder in the SD image-variations layout (what ImageMixer converts to)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImageVariationPipeline, UNet2DConditionModel
    from diffusers.utils import logging as dlogging
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    dlogging.disable_progress_bar()
    torch.manual_seed(seed + 1)
    n_unet = len(sizes.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=sizes.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n_unet - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n_unet - 1),
        cross_attention_dim=sizes.clip_dim, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=sizes.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(sizes.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(sizes.vae_channels), norm_num_groups=8)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        patch_size=8, image_size=sizes.clip_img, projection_dim=sizes.clip_dim))
    processor = CLIPImageProcessor(size={"shortest_edge": sizes.clip_img},
                                   crop_size={"height": sizes.clip_img, "width": sizes.clip_img})
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler, feature_extractor=processor,
        safety_checker=None, requires_safety_checker=False)
    path = folder / "image-mixer"
    pipe.save_pretrained(path)
    return path


def build_tiny_models(folder: str | Path, sizes: TinySizes = TinySizes(), seed: int = 0) -> dict:
    """Write every tiny model under `folder` (skipped when already there) and return their paths."""
    folder = Path(folder)
    paths = {"teacher": folder / "teacher" / "model.safetensors",
             "student": folder / "student" / "model.safetensors",
             "image-mixer": folder / "image-mixer"}
    if not _done(folder, sizes):
        build_teacher(folder, sizes, seed)
        build_student(folder, sizes, seed)
        build_image_mixer(folder, sizes, seed)
        (folder / "tiny.json").write_text(json.dumps(_describe(sizes), indent=1))
    return {k: str(v) for k, v in paths.items()}

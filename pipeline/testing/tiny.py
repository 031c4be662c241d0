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


# The demo compare's second student: DINOv2's ViT-S/14 architecture (timm vit_small_patch14_dinov2:
# patch 14, layer scale) at a tiny width and depth, random weights (the published ViT-S/14 was
# distilled from ViT-g; nothing here stands in for that), built for 56 px inputs (4 × 4 patches).
VIT_STUDENT_ARCH = "vit_small_patch14_dinov2"
VIT_STUDENT_KWARGS = {"img_size": 56, "embed_dim": 96, "depth": 2, "num_heads": 3}


def build_vit_student(folder: Path, seed: int = 0) -> Path:
    """The tiny ViT-S/14 student's weight file (folder/vit-student/model.safetensors), loaded by path."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed + 5)
    model = timm.create_model(VIT_STUDENT_ARCH, pretrained=False, num_classes=0, **VIT_STUDENT_KWARGS)
    path = folder / "vit-student" / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _tiny_unet(sizes: TinySizes, **kwargs):
    from diffusers import UNet2DConditionModel

    n_unet = len(sizes.unet_channels)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=sizes.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n_unet - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n_unet - 1),
        cross_attention_dim=sizes.clip_dim, attention_head_dim=8, norm_num_groups=8, **kwargs)


def _tiny_vae(sizes: TinySizes):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=sizes.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(sizes.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(sizes.vae_channels), norm_num_groups=8)


def _tiny_clip_vision(sizes: TinySizes):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        patch_size=8, image_size=sizes.clip_img, projection_dim=sizes.clip_dim))


def clip_processor(size: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def sd_ddim_scheduler(**kwargs):
    """The DDIM configuration SD 1.x/2.x folders ship (scaled-linear betas, 'leading' steps + 1)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, **kwargs)


def _image_variation_pipeline(sizes: TinySizes, seed: int):
    from diffusers import StableDiffusionImageVariationPipeline
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    torch.manual_seed(seed)
    unet, vae, encoder = _tiny_unet(sizes), _tiny_vae(sizes), _tiny_clip_vision(sizes)
    return StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=sd_ddim_scheduler(),
        feature_extractor=clip_processor(sizes.clip_img), safety_checker=None, requires_safety_checker=False)


def build_image_mixer(folder: Path, sizes: TinySizes, seed: int = 0) -> Path:
    """A diffusers folder in the SD image-variations layout (what ImageMixer converts to)."""
    path = folder / "image-mixer"
    _image_variation_pipeline(sizes, seed + 1).save_pretrained(path)
    return path


def build_sd_image_variations(folder: Path, sizes: TinySizes, seed: int = 0) -> Path:
    """lambdalabs/sd-image-variations-diffusers' layout (the same as ImageMixer's, other weights)."""
    path = folder / "sd-image-variations"
    _image_variation_pipeline(sizes, seed + 3).save_pretrained(path)
    return path


def write_clip_tokenizer(folder: Path, max_length: int = 77) -> None:
    """A tiny CLIP BPE tokenizer in the files SD 2.x folders ship (vocab.json, merges.txt,
    tokenizer_config.json): lowercase letters and digits, word-final forms, two merges."""
    import string

    chars = string.ascii_lowercase + string.digits
    tokens = list(chars) + [c + "</w>" for c in chars] + ["ca", "cat</w>", "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))


def build_unclip(folder: Path, sizes: TinySizes, seed: int = 0) -> Path:
    """A diffusers folder in the Stable unCLIP 2.1 img2img layout: the UNet takes the image
    embedding ‖ its noise-level embedding as `class_labels` (projection class embedding), the text
    encoder and tokenizer give the (empty) prompt, v-prediction DDIM as SD 2.1 unCLIP ships."""
    from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    torch.manual_seed(seed + 4)
    unet = _tiny_unet(sizes, class_embed_type="projection", projection_class_embeddings_input_dim=2 * sizes.clip_dim,
                      use_linear_projection=True)
    vae, encoder = _tiny_vae(sizes), _tiny_clip_vision(sizes)
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=sizes.clip_dim)
    with torch.no_grad():  # real statistics, not the identity, so scale/unscale are exercised
        normalizer.mean.normal_(0.0, 0.5)
        normalizer.std.uniform_(0.5, 2.0)
    tokenizer, text_encoder = _tiny_clip_text(sizes)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=clip_processor(sizes.clip_img), image_encoder=encoder, image_normalizer=normalizer,
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000),
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet,
        scheduler=sd_ddim_scheduler(prediction_type="v_prediction"), vae=vae)
    return _save_with_clip_tokenizer(pipe, folder / "unclip")


def _tiny_clip_text(sizes: TinySizes):
    """(tokenizer, CLIP text encoder): the tiny BPE tokenizer and a text encoder whose hidden size is
    the UNet's cross-attention dim (the text embedding is the UNet's context)."""
    import tempfile

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=sizes.clip_dim, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    return tokenizer, text_encoder


def _save_with_clip_tokenizer(pipe, path: Path) -> Path:
    """save_pretrained, then the tokenizer as real folders have it (vocab.json + merges.txt), not
    transformers' re-save."""
    import shutil

    pipe.save_pretrained(path)
    shutil.rmtree(path / "tokenizer")
    write_clip_tokenizer(path / "tokenizer")
    return path


def build_sd_text(folder: Path, sizes: TinySizes, seed: int = 0) -> Path:
    """A diffusers folder in the StableDiffusionPipeline (text-to-image) layout: CLIP text encoder +
    tokenizer, a UNet whose cross-attention dim is the encoder's hidden size, VAE, SD's DDIM config."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    dlogging.disable_progress_bar()
    torch.manual_seed(seed + 6)
    tokenizer, text_encoder = _tiny_clip_text(sizes)
    pipe = StableDiffusionPipeline(vae=_tiny_vae(sizes), text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=_tiny_unet(sizes), scheduler=sd_ddim_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return _save_with_clip_tokenizer(pipe, folder / "sd-text")


def build_ldm_checkpoint(folder: Path, sizes: TinySizes = TinySizes(), seed: int = 0) -> dict:
    """A tiny image-variation model in the original single-file LDM layout, as
    lambdalabs/image-mixer's `image-mixer-pruned.ckpt`: `{"state_dict": {...}}` with
    `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE), `cond_stage_model.model.*`
    (OpenAI CLIP, text tower deleted as ldm's FrozenCLIPImageEmbedder does, leaving its small
    text-side tensors) and the diffusion schedule buffers; plus its original YAML config and the
    same weights as a diffusers folder (the reference a conversion must reproduce).

    LDM normalises with 32 groups and OpenAI CLIP uses 64-dim heads, so these tiny models are
    sized for that (channels multiple of 32, a 64-wide CLIP with one head)."""
    import yaml
    from diffusers import AutoencoderKL, StableDiffusionImageVariationPipeline, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ..models.convert import ldm_config
    from .ldm_layout import clip_vision_to_openai, unet_to_ldm, vae_to_ldm

    torch.manual_seed(seed + 5)
    vae_mult = (1, 1, 1, 1)
    config = ldm_config(model_channels=sizes.unet_channels[0],
                        channel_mult=tuple(c // sizes.unet_channels[0] for c in sizes.unet_channels),
                        num_res_blocks=1, attention_resolutions=(1,), context_dim=sizes.clip_dim,
                        vae_ch=32, vae_ch_mult=vae_mult, vae_res_blocks=1)
    n = len(sizes.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=sizes.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (n - 1),
        up_block_types=("UpBlock2D",) * (n - 1) + ("CrossAttnUpBlock2D",),
        cross_attention_dim=sizes.clip_dim, attention_head_dim=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(32,) * len(vae_mult),
        sample_size=512, down_block_types=("DownEncoderBlock2D",) * len(vae_mult),
        up_block_types=("UpDecoderBlock2D",) * len(vae_mult))
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
        patch_size=8, image_size=sizes.clip_img, projection_dim=sizes.clip_dim))
    scheduler = sd_ddim_scheduler()
    reference = folder / "ldm-reference"
    StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler,
        feature_extractor=clip_processor(sizes.clip_img), safety_checker=None,
        requires_safety_checker=False).save_pretrained(reference)

    state = {**unet_to_ldm(unet.state_dict(), unet.config), **vae_to_ldm(vae.state_dict(), vae.config),
             **clip_vision_to_openai(encoder.state_dict()),
             "cond_stage_model.model.logit_scale": torch.tensor(4.6052),
             "cond_stage_model.model.token_embedding.weight": torch.randn(16, 8),
             "betas": scheduler.betas.clone(), "alphas_cumprod": scheduler.alphas_cumprod.clone()}
    ckpt_dir = folder / "image-mixer-ldm"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.detach().clone().contiguous() for k, v in state.items()}},
               ckpt_dir / "image-mixer.ckpt")
    (ckpt_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return {"ckpt": ckpt_dir / "image-mixer.ckpt", "config": ckpt_dir / "config.yaml", "reference": reference}

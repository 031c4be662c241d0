"""Random-weight models at the paper's published configurations, written in the layouts users
download, so that `tsd demo --real-size` meets the files the recipes name (real weights drop in at
the same paths):

- DINOv2 ViT-g/14 as timm's hub file (`timm/vit_giant_patch14_dinov2.lvd142m`: `model.safetensors`,
  timm's state dict at the 518 px grid, no head, plus timm's `config.json`);
- CLIP ViT-L/14 as a transformers folder like `openai/clip-vit-large-patch14` (the whole CLIPModel,
  text and vision towers: `config.json`, `model.safetensors`, `preprocessor_config.json`; no
  tokenizer files, which the image path never reads);
- ImageMixer as one LDM checkpoint in the key layout of `lambdalabs/image-mixer`'s
  `image-mixer-pruned.ckpt` (see `image_mixer_state`), with its inference YAML beside it;
- the students as timm's hub files (`timm/resnet50.a1_in1k`, `timm/vit_small_patch16_224.augreg_in21k_ft_in1k`).

Each writer runs in its own process (`python -m pipeline.demo.published WHAT DIR`), so the peak
memory of one never adds to another's. Files are written fp32, as published; safetensors and
torch.save write tensor by tensor, without a second copy in memory.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..contract import storage

# openai/clip-vit-large-patch14's config.json (transformers CLIPConfig)
OPENAI_CLIP_VIT_L14 = {
    "projection_dim": 768,
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                    "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
                    "projection_dim": 768, "hidden_act": "quick_gelu"},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                      "num_hidden_layers": 24, "patch_size": 14, "image_size": 224, "projection_dim": 768,
                      "hidden_act": "quick_gelu"},
}
# ImageMixer's UNet and VAE: SD 1.x (image-mixer-config.yaml's unet_config / first_stage_config), in diffusers' terms
SD1_UNET = {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": (320, 640, 1280, 1280),
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "cross_attention_dim": 768, "attention_head_dim": 8}
SD_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
          "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
          "up_block_types": ("UpDecoderBlock2D",) * 4, "sample_size": 512}

# LDM's DDPM schedule buffers (ddpm.py register_schedule), in the checkpoint's order
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")


@dataclass(frozen=True)
class Student:
    arch: str
    hub_name: str                 # the timm hub repository whose model.safetensors this stands for
    img_size: int = 224
    model_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    teacher_arch: str
    teacher_kwargs: dict          # timm.create_model arguments of the hub file (its own grid)
    teacher_hub_name: str
    clip: dict                    # transformers CLIPConfig
    unet: dict                    # diffusers UNet2DConditionModel
    vae: dict                     # diffusers AutoencoderKL
    ldm: dict                     # models.convert.ldm_config arguments: the checkpoint's inference YAML
    students: tuple


PUBLISHED = ModelSpec(
    teacher_arch="vit_giant_patch14_dinov2", teacher_kwargs={}, teacher_hub_name="vit_giant_patch14_dinov2.lvd142m",
    clip=OPENAI_CLIP_VIT_L14, unet=SD1_UNET, vae=SD_VAE, ldm={},
    students=(Student("resnet50", "resnet50.a1_in1k"),
              Student("vit_small_patch16_224", "vit_small_patch16_224.augreg_in21k_ft_in1k")))

# The same files and stages with tiny models (LDM normalises with 32 groups and OpenAI CLIP uses
# 64-wide heads, hence these sizes): a rehearsal of the real-size run in seconds.
REHEARSAL = ModelSpec(
    teacher_arch="vit_small_patch14_dinov2", teacher_kwargs={"embed_dim": 192, "depth": 2, "num_heads": 3},
    teacher_hub_name="vit_small_patch14_dinov2.tiny",
    clip={"projection_dim": 32,
          "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 1, "num_hidden_layers": 1,
                          "max_position_embeddings": 77, "vocab_size": 100, "projection_dim": 32},
          "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 1,
                            "num_hidden_layers": 2, "patch_size": 8, "image_size": 32, "projection_dim": 32}},
    unet={"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 1, "block_out_channels": (32, 64),
          "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
          "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32, "attention_head_dim": 8},
    vae={"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
         "block_out_channels": (32,) * 4, "down_block_types": ("DownEncoderBlock2D",) * 4,
         "up_block_types": ("UpDecoderBlock2D",) * 4, "sample_size": 512},
    ldm={"model_channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (1,),
         "context_dim": 32, "vae_ch": 32, "vae_ch_mult": (1, 1, 1, 1), "vae_res_blocks": 1},
    students=(Student("resnet10t", "resnet10t.c3_in1k", 64),
              Student("vit_tiny_patch16_224", "vit_tiny_patch16_224.augreg_in21k_ft_in1k", 64, {"img_size": 64})))
SPECS = {"published": PUBLISHED, "rehearsal": REHEARSAL}


# -- where each file goes ---------------------------------------------------------------------------
def paths(models: Path, spec: ModelSpec) -> dict[str, Path]:
    models = Path(models)
    out = {"teacher": models / spec.teacher_hub_name / "model.safetensors",
           "clip": models / "clip-vit-large-patch14",
           "image-mixer": models / "image-mixer" / "image-mixer-pruned.ckpt",
           "image-mixer-config": models / "image-mixer" / "image-mixer-config.yaml",
           "image-mixer-diffusers": models / "image-mixer-diffusers"}
    for s in spec.students:
        out[s.arch] = models / s.hub_name / "model.safetensors"
    return out


def _save_safetensors(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    with storage.publishing(str(path)) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp)


def _timm_config(model, arch: str, hub_name: str) -> dict:
    """The `config.json` timm writes beside a hub file (push_to_hf_hub's `save_config`)."""
    cfg = dict(model.pretrained_cfg)
    cfg.pop("architecture", None)
    return {"architecture": arch, "num_classes": model.num_classes, "num_features": model.num_features,
            "pretrained_cfg": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()
                               if isinstance(v, (str, int, float, bool, tuple, list, type(None)))},
            "tsdistill": f"random weights standing in for timm/{hub_name}"}


def _write_timm_file(arch: str, hub_name: str, path: Path, seed: int, **kwargs) -> Path:
    """A random-weight timm model as its hub file, `model.safetensors` with timm's `config.json` beside it."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    _save_safetensors(model.state_dict(), path)
    (path.parent / "config.json").write_text(json.dumps(_timm_config(model, arch, hub_name), indent=2))
    return path


def write_teacher(models: Path, spec: ModelSpec) -> Path:
    return _write_timm_file(spec.teacher_arch, spec.teacher_hub_name, paths(models, spec)["teacher"], seed=0,
                            num_classes=0, **spec.teacher_kwargs)


def write_student(models: Path, spec: ModelSpec, student: Student) -> Path:
    # the hub file's 1000-class head
    return _write_timm_file(student.arch, student.hub_name, paths(models, spec)[student.arch], seed=2)


def write_clip(models: Path, spec: ModelSpec) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(1)
    model = CLIPModel(CLIPConfig(**spec.clip)).eval()
    folder = paths(models, spec)["clip"]
    tmp = folder.with_name(f".{folder.name}.tmp")
    model.save_pretrained(tmp)
    size = spec.clip["vision_config"]["image_size"]
    # CLIPImageProcessor's defaults are OpenAI's preprocessing (bicubic short side, centre crop, mean/std)
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def ldm_schedule(timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> dict:
    """The 12 buffers LDM's `register_schedule` keeps (float64 math, stored float32; v_posterior 0)."""
    import numpy as np

    from ..models.ldm_ddim import ldm_betas

    betas = ldm_betas(timesteps, linear_start, linear_end)
    alphas = 1.0 - betas
    cumprod = np.cumprod(alphas, axis=0)
    prev = np.append(1.0, cumprod[:-1])
    posterior_variance = betas * (1.0 - prev) / (1.0 - cumprod)
    values = {
        "betas": betas, "alphas_cumprod": cumprod, "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": np.sqrt(cumprod), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - cumprod), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / cumprod - 1), "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - cumprod),
        "posterior_mean_coef2": (1.0 - prev) * np.sqrt(alphas) / (1.0 - cumprod),
    }
    return {k: torch.tensor(values[k], dtype=torch.float32) for k in SCHEDULE_BUFFERS}


def clip_leftovers(clip_state: dict) -> dict:
    """What ldm's FrozenCLIPImageMutliEmbedder keeps of OpenAI CLIP's text side after
    `del self.model.transformer` (OpenAI layout: text_projection is [width, dim])."""
    t = "text_model."
    return {"cond_stage_model.model.token_embedding.weight": clip_state[t + "embeddings.token_embedding.weight"],
            "cond_stage_model.model.positional_embedding": clip_state[t + "embeddings.position_embedding.weight"],
            "cond_stage_model.model.ln_final.weight": clip_state[t + "final_layer_norm.weight"],
            "cond_stage_model.model.ln_final.bias": clip_state[t + "final_layer_norm.bias"],
            "cond_stage_model.model.text_projection": clip_state["text_projection.weight"].T,
            "cond_stage_model.model.logit_scale": clip_state["logit_scale"]}


def image_mixer_state(spec: ModelSpec, clip_state: dict, device: str = "cpu") -> dict:
    """`state_dict` of image-mixer-pruned.ckpt (lambdalabs/image-mixer; notes in the README): the
    SD-1.x UNet under `model.diffusion_model.` (686 tensors at the published size), the KL-f8 VAE
    under `first_stage_model.` (248), the frozen OpenAI ViT-L/14 visual tower under
    `cond_stage_model.model.visual.` (296: the same weights as the CLIP folder, ImageMixer never
    trained them), the 6 text-side tensors its embedder keeps, the 12 schedule buffers, and
    `model_ema.decay` / `model_ema.num_updates` (the pruned file keeps one, EMA, copy of the UNet).
    On `device="meta"` nothing is allocated (the tests count the published layout that way)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ..testing.ldm_layout import clip_vision_to_openai, unet_to_ldm, vae_to_ldm

    torch.manual_seed(3)
    with torch.device(device):
        unet = UNet2DConditionModel(**spec.unet)
    state = unet_to_ldm(unet.state_dict(), unet.config)
    del unet
    with torch.device(device):
        vae = AutoencoderKL(**spec.vae)
    state.update(vae_to_ldm(vae.state_dict(), vae.config))
    del vae
    vision = {k: v for k, v in clip_state.items() if k.startswith("vision_model.") or k == "visual_projection.weight"}
    state.update(clip_vision_to_openai(vision))
    state.update(clip_leftovers(clip_state))
    state.update(ldm_schedule())
    state["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
    state["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
    return state


def write_image_mixer(models: Path, spec: ModelSpec) -> Path:
    """The checkpoint as Lightning left it after pruning (every top-level entry but the optimizer
    states), minus Lightning's callback objects, which would make it unloadable with
    `weights_only=True` (the real file has them: see models.convert)."""
    import yaml
    from safetensors.torch import load_file

    from ..models.convert import ldm_config

    p = paths(models, spec)
    clip_state = load_file(str(p["clip"] / "model.safetensors"))   # the frozen CLIP ImageMixer embeds with
    state = image_mixer_state(spec, clip_state)
    del clip_state
    path = p["image-mixer"]
    with storage.publishing(str(path)) as tmp:
        torch.save({"state_dict": {k: v.contiguous() for k, v in state.items()}, "global_step": 0, "epoch": 0,
                    "pytorch-lightning_version": "1.6.5"}, tmp)
    p["image-mixer-config"].write_text(yaml.safe_dump(ldm_config(**spec.ldm), sort_keys=False))
    return path


# -- counting what was written ----------------------------------------------------------------------
CKPT_GROUPS = (("UNet", "model.diffusion_model."), ("VAE", "first_stage_model."),
               ("CLIP visual", "cond_stage_model.model.visual."),
               ("CLIP text-side leftovers", "cond_stage_model.model."),
               ("EMA bookkeeping", "model_ema."), ("schedule buffers", ""))


BATCHNORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def count_safetensors(path: str | Path) -> int:
    """Parameters in a .safetensors file, from its header (no tensor is read); batch-norm running
    statistics are buffers, not parameters, and are left out (the published counts do the same)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            if key.endswith(BATCHNORM_STATISTICS):
                continue
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def count_checkpoint(path: str | Path) -> dict[str, dict]:
    """{group: {tensors, params}} of an LDM checkpoint, memory-mapped (nothing is copied)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    out = {name: {"tensors": 0, "params": 0} for name, _ in CKPT_GROUPS}
    for key, value in state.items():
        name = next(n for n, prefix in CKPT_GROUPS if key.startswith(prefix))
        out[name]["tensors"] += 1
        out[name]["params"] += value.numel()
    return out


def count_folder(folder: str | Path) -> int:
    return sum(count_safetensors(p) for p in sorted(Path(folder).rglob("*.safetensors")))


def main(argv: list[str] | None = None) -> int:
    from ..runtime import quiet_libraries

    quiet_libraries()
    p = argparse.ArgumentParser(prog="python -m pipeline.demo.published", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["teacher", "clip", "image-mixer", "students"])
    p.add_argument("models", help="the models folder")
    p.add_argument("--spec", choices=sorted(SPECS), default="published")
    args = p.parse_args(argv)
    spec, models = SPECS[args.spec], Path(args.models)
    if args.what == "teacher":
        print(write_teacher(models, spec))
    elif args.what == "clip":
        print(write_clip(models, spec))
    elif args.what == "image-mixer":
        print(write_image_mixer(models, spec))
    else:
        for student in spec.students:
            print(write_student(models, spec, student))
    return 0


if __name__ == "__main__":
    sys.exit(main())

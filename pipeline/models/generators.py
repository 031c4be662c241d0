"""The generator registry: two parent images and a mixing weight in, one image out.

Every generator takes a batch of parent pairs (uint8 CHW tensors of any size), mixing weights
(the share of parent A) and per-sample seeds, and returns uint8 images [B, 3, S, S] plus a failure
reason per sample (None when fine). Per-sample noise comes from the sample's own seed, so an image
does not depend on which other samples shared its batch.

- image-mixer: the paper's SD-Mixup (lambdalabs ImageMixer, an SD-1.x image-variation finetune):
  CLIP image embeddings of both parents, scaled by strengths derived from the weight, concatenated
  as two conditioning tokens; zeros as the unconditional branch; DDIM + classifier-free guidance.
- mixup, cutmix: the classical pixel-space baselines (no diffusion).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import GeneratorConfig

REGISTRY: dict[str, Callable] = {}


def register(name: str):
    def wrap(cls):
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return wrap


def build_generator(cfg: GeneratorConfig, device: torch.device):
    if cfg.kind not in REGISTRY:
        raise ValueError(f"generator.kind: unknown generator {cfg.kind!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[cfg.kind](cfg, device)


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32  # half precision on CPU is slow and not what a CPU rerun should use
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def strengths(weight: float) -> tuple[float, float]:
    """ImageMixer token strengths from the mixing weight: the dominant parent at 1, the other
    scaled by the ratio of weights (an even mix gives (1, 1): ImageMixer's demo default)."""
    top = max(weight, 1.0 - weight)
    return weight / top, (1.0 - weight) / top


def square_resize(image: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """uint8/float CHW → float [3, size, size] in [0, 255]: short side to `size`, centre crop."""
    _, h, w = image.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(image.unsqueeze(0).float(), size=(nh, nw), mode=mode, antialias=True,
                      align_corners=False if mode != "nearest" else None)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[0, :, top:top + size, left:left + size].clamp(0, 255)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8)


@register("mixup")
class PixelMixup:
    """Pixel-space mixup (Zhang et al. 2018) of two parents, both resized to size×size."""

    def __init__(self, cfg: GeneratorConfig, device: torch.device):
        self.cfg, self.device = cfg, device

    def files(self) -> dict:
        return {}

    def mix(self, parents_a, parents_b, weights, seeds):
        out = []
        for a, b, w in zip(parents_a, parents_b, weights):
            xa, xb = square_resize(a, self.cfg.size), square_resize(b, self.cfg.size)
            out.append(_to_uint8(w * xa + (1 - w) * xb))
        return torch.stack(out), [None] * len(out)


@register("cutmix")
class PixelCutmix(PixelMixup):
    """CutMix (Yun et al. 2019): a box of B covering (1 - weight) of the area pasted into A."""

    def mix(self, parents_a, parents_b, weights, seeds):
        size, out = self.cfg.size, []
        for a, b, w, seed in zip(parents_a, parents_b, weights, seeds):
            xa, xb = square_resize(a, size), square_resize(b, size)
            g = torch.Generator().manual_seed(seed)
            side = int(round(size * math.sqrt(1.0 - w)))
            if side > 0:
                cy, cx = (int(v) for v in torch.randint(0, size, (2,), generator=g))
                y0, x0 = max(cy - side // 2, 0), max(cx - side // 2, 0)
                y1, x1 = min(y0 + side, size), min(x0 + side, size)
                xa[:, y0:y1, x0:x1] = xb[:, y0:y1, x0:x1]
            out.append(_to_uint8(xa))
        return torch.stack(out), [None] * len(out)


SCHEDULERS = {"ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler",
              "euler": "EulerDiscreteScheduler", "pndm": "PNDMScheduler"}


class DiffusionGenerator:
    """Shared machinery of the image-conditioned SD-1.x generators: loading a diffusers folder,
    CLIP image embeddings, the batched CFG denoising loop and the VAE decode."""

    def __init__(self, cfg: GeneratorConfig, device: torch.device):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.utils import logging as dlogging
        from transformers import CLIPVisionModelWithProjection
        from transformers.utils import logging as tlogging

        dlogging.disable_progress_bar()
        tlogging.disable_progress_bar()
        self.cfg, self.device = cfg, device
        self.root = Path(cfg.path)
        self.dtype = torch_dtype(cfg.dtype, device)
        self.image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            self.root / "image_encoder").to(device, self.dtype).eval()
        self.unet = UNet2DConditionModel.from_pretrained(self.root / "unet").to(device, self.dtype).eval()
        self.vae = AutoencoderKL.from_pretrained(self.root / "vae").to(device, self.dtype).eval()
        self.scheduler_config = json.loads((self.root / "scheduler" / "scheduler_config.json").read_text())
        self._clip_preprocess_config()
        if cfg.compile and device.type == "cuda":
            # default mode, fixed shapes (constant batch size in the worker): compiled once per worker
            self.unet = torch.compile(self.unet, fullgraph=False, dynamic=False)

    def _clip_preprocess_config(self):
        pp = json.loads((self.root / "feature_extractor" / "preprocessor_config.json").read_text())
        crop = pp.get("crop_size", 224)
        self.clip_size = crop["height"] if isinstance(crop, dict) else int(crop)
        self.clip_mean = torch.tensor(pp["image_mean"], device=self.device).view(1, 3, 1, 1)
        self.clip_std = torch.tensor(pp["image_std"], device=self.device).view(1, 3, 1, 1)

    def files(self) -> dict:
        """Weight files and their sha256 (the manifest's record of the generator)."""
        from ..format import sha256_file

        return {str(p.relative_to(self.root)): sha256_file(p)
                for p in sorted(self.root.rglob("*")) if p.is_file() and p.suffix in (".safetensors", ".bin", ".ckpt")}

    def new_scheduler(self):
        import diffusers

        cls = getattr(diffusers, SCHEDULERS[self.cfg.scheduler])
        sched = cls.from_config(self.scheduler_config)
        sched.set_timesteps(self.cfg.steps, device=self.device)
        return sched

    @torch.no_grad()
    def embed(self, images: list[torch.Tensor]) -> torch.Tensor:
        """CLIP projected image embeddings [B, D] (bicubic short-side resize, centre crop)."""
        x = torch.stack([square_resize(im.to(self.device), self.clip_size, "bicubic") for im in images])
        x = (x / 255.0 - self.clip_mean) / self.clip_std
        return self.image_encoder(pixel_values=x.to(self.dtype)).image_embeds

    def initial_latents(self, seeds: list[int], sched) -> torch.Tensor:
        """Per-sample noise drawn on the CPU from the sample's seed: identical whatever the batch."""
        h = w = self.cfg.size // self.vae_scale
        noise = [torch.randn((self.unet.config.in_channels, h, w), generator=torch.Generator().manual_seed(s))
                 for s in seeds]
        return torch.stack(noise).to(self.device, self.dtype) * sched.init_noise_sigma

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def denoise(self, cond: torch.Tensor, seeds: list[int], **unet_kwargs) -> torch.Tensor:
        """DDIM (or the configured scheduler) with both CFG branches in one UNet batch."""
        sched = self.new_scheduler()
        latents = self.initial_latents(seeds, sched)
        guided = self.cfg.guidance > 1.0
        context = torch.cat([torch.zeros_like(cond), cond]) if guided else cond
        extra = {k: torch.cat([v, v]) if guided else v for k, v in unet_kwargs.items()}
        for t in sched.timesteps:
            x = torch.cat([latents, latents]) if guided else latents
            x = sched.scale_model_input(x, t)
            eps = self.unet(x, t, encoder_hidden_states=context, **extra).sample
            if guided:
                uncond, text = eps.chunk(2)
                eps = uncond + self.cfg.guidance * (text - uncond)
            latents = sched.step(eps, t, latents).prev_sample
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, list]:
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample.float()
        finite = torch.isfinite(images).flatten(1).all(1).tolist()
        images = torch.nan_to_num(images, nan=0.0)
        images = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()
        return images, [None if ok else "non-finite pixels in the generated image" for ok in finite]


@register("image-mixer")
class ImageMixer(DiffusionGenerator):
    """Conditioning tokens [s_a·e_a, s_b·e_b] (two tokens), unconditional branch = zeros."""

    @torch.no_grad()
    def mix(self, parents_a, parents_b, weights, seeds):
        emb = self.embed(list(parents_a) + list(parents_b))
        ea, eb = emb.chunk(2)
        s = torch.tensor([strengths(w) for w in weights], device=self.device, dtype=emb.dtype)
        cond = torch.stack([ea * s[:, :1], eb * s[:, 1:]], dim=1)
        return self.decode(self.denoise(cond, seeds))

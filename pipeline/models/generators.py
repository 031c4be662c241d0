"""The generators (registered in `contract.generators`): two parent images and a mixing weight in, one image out.

Every generator takes a batch of parent pairs (uint8 CHW tensors of any size), mixing weights
(the share of parent A) and per-sample seeds, and returns uint8 images [B, 3, S, S] plus a failure
reason per sample (None when fine). Per-sample noise comes from the sample's own seed, so an image
does not depend on which other samples shared its batch.

- image-mixer: the paper's SD-Mixup (lambdalabs ImageMixer, an SD-1.x image-variation finetune):
  CLIP image embeddings of both parents, scaled by strengths derived from the weight, in the first
  two of ImageMixer's 5 conditioning slots, the others zeros; zeros as the unconditional branch;
  DDIM (ldm's, in the paper's recipes) + classifier-free guidance.
- sd-image-variations (lambdalabs/sd-image-variations-diffusers layout): one conditioning token,
  the slerp (or lerp) of the two CLIP image embeddings at the weight; zeros as the unconditional
  branch, as the stock StableDiffusionImageVariationPipeline.
- unclip (Stable unCLIP 2.1 img2img layout): the mixed CLIP embedding, noised at `noise_level`
  and followed by its noise-level embedding, enters as the UNet's `class_labels` (zeros for the
  unconditional branch); the text context is the empty prompt in both branches, as the stock
  StableUnCLIPImg2ImgPipeline does without a prompt.
- mixup, cutmix: the classical pixel-space baselines (no diffusion).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import GeneratorConfig
from ..contract.device import cuda_settings, to_device, torch_dtype
from .ldm_ddim import LDM_SCHEDULERS, LdmDDIM


def strengths(weight: float) -> tuple[float, float]:
    """ImageMixer token strengths from the mixing weight: the dominant parent at 1, the other
    scaled by the ratio of weights (an even mix gives (1, 1): ImageMixer's demo default). A choice
    of ours: ImageMixer has no mixing weight, only a strength slider per input (0..5, default 1)
    that multiplies that input's raw embedding."""
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


def clip_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 CHW → float [3, size, size] in [0, 255] with CLIPImageProcessor's geometry: short side
    to `size`, long side truncated (int(size * long / short)), crop offset floored; bicubic with
    antialiasing (torch's AA bicubic uses PIL's kernel). What remains different from the processor:
    PIL resizes in two uint8 passes, rounding in between; this stays in float (≤ 3 levels apart)."""
    _, h, w = image.shape
    short = min(h, w)
    nh, nw = (size, int(size * w / short)) if h <= w else (int(size * h / short), size)
    x = F.interpolate(image.unsqueeze(0).float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[0, :, top:top + size, left:left + size].clamp(0, 255)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8)


class PixelMixup:
    """Pixel-space mixup (Zhang et al. 2018) of two parents, both resized to size×size."""

    def __init__(self, cfg: GeneratorConfig, device: torch.device):
        self.cfg, self.device = cfg, device

    def mix(self, parents_a, parents_b, weights, seeds):
        out = []
        for a, b, w in zip(parents_a, parents_b, weights):
            xa, xb = square_resize(a, self.cfg.size), square_resize(b, self.cfg.size)
            out.append(_to_uint8(w * xa + (1 - w) * xb))
        return torch.stack(out), [None] * len(out)


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

def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation; t = share of b, one value per row ([B, 1])."""
    return (1 - t) * a + t * b


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, parallel: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation along the great circle between the directions of a and b, the
    coefficients applied to the raw vectors (as diffusers' unCLIP image interpolation does), so
    norms interpolate too; t = share of b per row. Nearly (anti)parallel rows fall back to lerp,
    where sin(angle) would divide by ~0. t = 0 gives exactly a, t = 1 exactly b."""
    a, b = a.float(), b.float()
    cos = F.cosine_similarity(a, b, dim=-1).clamp(-1, 1).unsqueeze(-1)
    angle = torch.acos(cos)
    sin = torch.sin(angle)
    ca, cb = torch.sin((1 - t) * angle) / sin, torch.sin(t * angle) / sin
    near = cos.abs() > parallel
    return torch.where(near, 1 - t, ca) * a + torch.where(near, t, cb) * b


INTERPOLATIONS = {"lerp": lerp, "slerp": slerp}


@dataclass
class Conditioning:
    """What a batch is conditioned on, for the conditional and the unconditional CFG branch."""
    context: torch.Tensor                       # encoder_hidden_states [B, T, D]
    uncond_context: torch.Tensor
    class_labels: torch.Tensor | None = None    # unCLIP: noised image embedding ‖ noise-level embedding
    uncond_class_labels: torch.Tensor | None = None

    def unet_kwargs(self, guided: bool) -> dict:
        """UNet keyword arguments; with guidance the unconditional half comes first (as the stock pipelines)."""
        if not guided:
            return {"encoder_hidden_states": self.context, "class_labels": self.class_labels}
        labels = None
        if self.class_labels is not None:
            labels = torch.cat([self.uncond_class_labels, self.class_labels])
        return {"encoder_hidden_states": torch.cat([self.uncond_context, self.context]), "class_labels": labels}


def _diffusers_class(folder: Path):
    """The diffusers class a saved component names in its config (`_class_name`)."""
    import diffusers

    config_file = next(folder.glob("*config.json"))
    return getattr(diffusers, json.loads(config_file.read_text())["_class_name"])


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], device: torch.device) -> torch.Tensor:
    """CLIP text embeddings [B, L, D] (the last hidden state), tokenized as the stock Stable
    Diffusion pipelines do: padded to the tokenizer's max length, truncated beyond it."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    mask = ids.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(ids.input_ids.to(device), attention_mask=mask)[0]


class DiffusionGenerator:
    """Shared machinery of the image-conditioned diffusion generators: loading a diffusers folder,
    CLIP image embeddings, the batched CFG denoising loop (both branches in one UNet call), the
    chunked VAE decode and the non-finite check. A subclass only states its conditioning.

    Every denoising batch has exactly `cfg.batch_size` samples: a short one is padded (repeating
    its last sample) and the padding dropped. One shape means a compiled UNet never recompiles,
    and it makes a sample's image independent of its batch-mates bit for bit: BLAS and oneDNN
    kernels pick their blocking by shape, so the same sample in a batch of another size can differ
    in the last float bits (±1 intensity level after decoding), while at a fixed shape each row is
    computed the same way whatever the other rows hold. `channels_last` is off by default: on the
    reference H100 it made the fp16 UNet 12% slower at batch 64 (anchors: unet640_fp16_cl_b64).

    Speed switches (GeneratorConfig): `attention` (SDPA, or the plain math to measure it against),
    `compile` (once per worker; padding keeps one shape, so it never recompiles) and `cuda_graphs`
    (compile mode reduce-overhead: the UNet call replayed as one CUDA graph), `vae_slice` (images
    per VAE decode call: the decoder's full-resolution activations dominate memory, about 1.7 GB
    per 128-channel map for 16 images at 640 px in fp16, several alive at once)."""

    image_conditioned = True   # loads the folder's CLIP image encoder and its preprocessing

    def __init__(self, cfg: GeneratorConfig, device: torch.device, channels_last: bool = False):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
        from diffusers.utils import logging as dlogging
        from transformers import CLIPVisionModelWithProjection
        from transformers.utils import logging as tlogging

        dlogging.disable_progress_bar()
        tlogging.disable_progress_bar()
        self.cfg, self.device = cfg, device
        self.root = Path(cfg.path)
        self.dtype = torch_dtype(cfg.dtype, device)
        # loaded straight into the working dtype (diffusers keeps its fp32-only modules fp32 then)
        if self.image_conditioned:
            self.image_encoder = CLIPVisionModelWithProjection.from_pretrained(
                self.root / "image_encoder", dtype=self.dtype).to(device).eval()
        self.unet = UNet2DConditionModel.from_pretrained(self.root / "unet", torch_dtype=self.dtype).to(device).eval()
        self.vae = AutoencoderKL.from_pretrained(self.root / "vae", torch_dtype=self.dtype).to(device).eval()
        # SDPA (flash / memory-efficient kernels on GPU): diffusers' default, stated so it stays so
        attention = AttnProcessor2_0 if cfg.attention == "sdpa" else AttnProcessor
        self.unet.set_attn_processor(attention())
        self.vae.set_attn_processor(attention())
        self.scheduler_config = json.loads((self.root / "scheduler" / "scheduler_config.json").read_text())
        if self.image_conditioned:
            self._clip_preprocess_config()
        cuda_settings(device)
        if device.type == "cuda" and channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        self.cuda_graphs = bool(cfg.compile and cfg.cuda_graphs and device.type == "cuda")
        if cfg.compile and device.type == "cuda":
            # default mode (max-autotune took over 5 min on the H100), fixed shapes: compiled once per worker
            mode = "reduce-overhead" if self.cuda_graphs else None
            # fullgraph: the UNet compiles without a break today, and a future one must fail loudly
            self.unet = torch.compile(self.unet, fullgraph=True, dynamic=False, mode=mode)

    def _clip_preprocess_config(self):
        pp = json.loads((self.root / "feature_extractor" / "preprocessor_config.json").read_text())
        crop = pp.get("crop_size", 224)
        self.clip_size = crop["height"] if isinstance(crop, dict) else int(crop)
        self.clip_mean = to_device(torch.tensor(pp["image_mean"]).view(1, 3, 1, 1), self.device)
        self.clip_std = to_device(torch.tensor(pp["image_std"]).view(1, 3, 1, 1), self.device)

    def new_scheduler(self):
        import diffusers

        if self.cfg.scheduler in LDM_SCHEDULERS:
            return LdmDDIM(self.scheduler_config, self.cfg.steps, self.cfg.scheduler)
        cls = getattr(diffusers, SCHEDULERS[self.cfg.scheduler])
        sched = cls.from_config(self.scheduler_config)
        # on the host: its tables are read with host timesteps in the loop, never with device ones
        sched.set_timesteps(self.cfg.steps, device="cpu")
        return sched

    # -- conditioning helpers ----------------------------------------------------------------------
    def clip_pixels(self, images: list[torch.Tensor]) -> torch.Tensor:
        """CLIP pixel values [B, 3, s, s]: the folder's CLIPImageProcessor preprocessing (resize,
        centre crop, mean/std) done on tensors (see `clip_resize`)."""
        x = torch.stack([clip_resize(to_device(im, self.device), self.clip_size) for im in images])
        return ((x / 255.0 - self.clip_mean) / self.clip_std).to(self.dtype)

    @torch.no_grad()
    def embed(self, images: list[torch.Tensor]) -> torch.Tensor:
        """CLIP projected image embeddings [B, D]."""
        return self.image_encoder(pixel_values=self.clip_pixels(images)).image_embeds

    def mixed_embedding(self, parents_a, parents_b, weights) -> torch.Tensor:
        """One embedding per pair [B, D] (fp32): `cfg.interpolation` of the parents' embeddings,
        weight = share of parent A."""
        ea, eb = self.embed(list(parents_a) + list(parents_b)).chunk(2)
        share_b = 1.0 - to_device(torch.tensor([float(w) for w in weights]), self.device).unsqueeze(1)
        return INTERPOLATIONS[self.cfg.interpolation](ea.float(), eb.float(), share_b)

    def conditioning(self, parents_a, parents_b, weights, generators: list[torch.Generator]) -> Conditioning:
        """The batch's conditioning; any noise it needs is drawn from the per-sample `generators`
        (before the initial latents are)."""
        raise NotImplementedError

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def mix(self, parents_a, parents_b, weights, seeds):
        return self.generate([parents_a, parents_b, weights], seeds, self.conditioning)

    @torch.no_grad()
    def generate(self, columns: list, seeds, conditioning):
        """Images and failures for per-sample inputs (`columns`, each a list with one entry per
        seed), in batches of exactly `cfg.batch_size` (a short one padded with its last sample, the
        padding dropped): `conditioning(*batch_columns, generators)` states what the batch is
        conditioned on; denoising and decoding are shared."""
        if not seeds:
            return torch.empty((0, 3, self.cfg.size, self.cfg.size), dtype=torch.uint8), []
        images, failures = [], []
        n = self.cfg.batch_size
        for i in range(0, len(seeds), n):
            batch, batch_seeds = [list(c[i:i + n]) for c in columns], list(seeds[i:i + n])
            real = len(batch_seeds)
            pad = n - real
            if pad:
                batch = [c + [c[-1]] * pad for c in batch]
                batch_seeds += [batch_seeds[-1]] * pad
            generators = [torch.Generator().manual_seed(int(s)) for s in batch_seeds]
            im, fails = self.decode(self.denoise(conditioning(*batch, generators), generators))
            images.append(im[:real])
            failures += fails[:real]
        return torch.cat(images), failures

    @property
    def latent_dtype(self) -> torch.dtype:
        """ldm keeps its latents (and the DDIM update) in float32 while the UNet runs in half
        precision; diffusers' pipelines keep them in the UNet's dtype."""
        return torch.float32 if self.cfg.scheduler in LDM_SCHEDULERS else self.dtype

    def initial_latents(self, generators: list[torch.Generator], sched) -> torch.Tensor:
        """Per-sample noise drawn on the CPU from the sample's generator: identical whatever the batch."""
        h = w = self.cfg.size // self.vae_scale
        noise = [torch.randn((self.unet.config.in_channels, h, w), generator=g) for g in generators]
        return to_device(torch.stack(noise).to(self.latent_dtype), self.device) * sched.init_noise_sigma

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def denoise(self, cond: Conditioning, generators: list[torch.Generator]) -> torch.Tensor:
        """The configured scheduler with both CFG branches in one UNet batch (the stock pipelines' math).

        No host sync in the loop: the scheduler runs on host timesteps (Python numbers: its tables
        are read on the host), the UNet gets the same timesteps from one device copy made before
        the loop, so the host can queue step after step ahead of the device."""
        sched = self.new_scheduler()
        latents = self.initial_latents(generators, sched)
        host_steps = sched.timesteps.tolist()
        return self.denoising_loop(sched, latents, cond, host_steps, to_device(sched.timesteps, self.device))

    def denoising_loop(self, sched, latents: torch.Tensor, cond: Conditioning, host_steps: list,
                       device_steps: torch.Tensor) -> torch.Tensor:
        """Every scheduler step: what runs once per UNet call (tests/models/test_host_syncs.py counts
        its host syncs: none with ldm-ddim and ddim)."""
        guided = self.cfg.guidance > 1.0
        unet_kwargs = cond.unet_kwargs(guided)
        for i, t in enumerate(host_steps):
            x = torch.cat([latents, latents]) if guided else latents
            x = sched.scale_model_input(x, t).to(self.dtype)
            if self.cuda_graphs:   # the previous replay's outputs are consumed: let the graph reuse them
                torch.compiler.cudagraph_mark_step_begin()
            eps = self.unet(x, device_steps[i], **unet_kwargs).sample
            if guided:
                uncond, text = eps.chunk(2)
                eps = uncond + self.cfg.guidance * (text - uncond)
            elif self.cuda_graphs:   # graph-owned: the next replay overwrites it, and PNDM keeps past eps
                eps = eps.clone()
            latents = sched.step(eps, t, latents).prev_sample
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> tuple[torch.Tensor, list]:
        """uint8 images on the host and a failure per image; one copy to the host for the batch."""
        images, finite = [], []
        for chunk in latents.split(self.cfg.vae_slice):
            x = self.vae.decode((chunk / self.vae.config.scaling_factor).to(self.dtype)).sample.float()
            finite.append(torch.isfinite(x).flatten(1).all(1))
            x = torch.nan_to_num(x, nan=0.0)
            images.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        images, finite = torch.cat(images).cpu(), torch.cat(finite).cpu()
        return images, [None if ok else "non-finite pixels in the generated image" for ok in finite.tolist()]


class ImageMixer(DiffusionGenerator):
    """Context [s_a·e_a, s_b·e_b, 0, …, 0] of `cfg.tokens` slots (5: ImageMixer was trained on 5
    crop tokens, FrozenCLIPImageMutliEmbedder max_crops=5, and its demo fills unused inputs with
    zeros, n_inputs=5); unconditional branch = zeros of the same shape (the demo: `uc = 0 * conds`).
    The slots are not equivalent to fewer tokens: ldm's to_k/to_v have no bias, so each zero slot
    adds exp(0) to every cross-attention softmax denominator. e is the raw (unnormalised) projected
    CLIP image embedding, as the demo's `encode_image`."""

    def conditioning(self, parents_a, parents_b, weights, generators):
        ea, eb = self.embed(list(parents_a) + list(parents_b)).chunk(2)
        s = to_device(torch.tensor([strengths(w) for w in weights], dtype=ea.dtype), self.device)
        cond = ea.new_zeros((len(weights), self.cfg.tokens, ea.shape[1]))
        cond[:, 0], cond[:, 1] = ea * s[:, :1], eb * s[:, 1:]
        return Conditioning(cond, torch.zeros_like(cond))


class ImageVariations(DiffusionGenerator):
    """One conditioning token: the interpolated embedding; unconditional branch = zeros, as the
    stock StableDiffusionImageVariationPipeline (`torch.zeros_like(image_embeddings)`)."""

    def conditioning(self, parents_a, parents_b, weights, generators):
        cond = self.mixed_embedding(parents_a, parents_b, weights).unsqueeze(1).to(self.dtype)
        return Conditioning(cond, torch.zeros_like(cond))


class UnCLIP(DiffusionGenerator):
    """Stable unCLIP img2img: the mixed embedding is noised at `cfg.noise_level` (the folder's
    image_normalizer and image_noising_scheduler), its noise-level embedding appended, and the
    result passed as `class_labels`; zeros for the unconditional branch. The text context is the
    empty-prompt embedding (computed once) in both branches: the stock pipeline's default prompt and
    negative prompt are both ''. Per sample, the embedding noise is the first draw from its seed's
    generator and the initial latents the next, the stock pipeline's order."""

    def __init__(self, cfg: GeneratorConfig, device: torch.device, channels_last: bool = False):
        super().__init__(cfg, device, channels_last)
        from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
        from transformers import CLIPTextModel, CLIPTokenizer

        self.image_normalizer = StableUnCLIPImageNormalizer.from_pretrained(
            self.root / "image_normalizer").to(device, self.dtype).eval()
        noising = self.root / "image_noising_scheduler"
        self.image_noising_scheduler = _diffusers_class(noising).from_pretrained(noising)
        steps = self.image_noising_scheduler.config.num_train_timesteps
        if not 0 <= cfg.noise_level < steps:
            raise ValueError(f"generator.noise_level: must be in [0, {steps - 1}] for {noising}, got {cfg.noise_level}")
        self.prompt_embeds = self._empty_prompt(CLIPTokenizer.from_pretrained(self.root / "tokenizer"),
                                                CLIPTextModel.from_pretrained(self.root / "text_encoder"))

    def _empty_prompt(self, tokenizer, text_encoder) -> torch.Tensor:
        """The text embedding of '' [1, L, D]; the encoder is only needed for this, so it is dropped afterwards."""
        return encode_prompts(tokenizer, text_encoder.to(self.device, self.dtype).eval(), [""], self.device)

    def noise_image_embeddings(self, embeds: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """StableUnCLIPImg2ImgPipeline.noise_image_embeddings with the noise given: scale, add noise
        at `noise_level`, unscale, append the sinusoidal noise-level embedding."""
        from diffusers.models.embeddings import get_timestep_embedding

        level = torch.full((embeds.shape[0],), self.cfg.noise_level, device=embeds.device)
        x = self.image_normalizer.scale(embeds)
        x = self.image_noising_scheduler.add_noise(x, timesteps=level, noise=noise)
        x = self.image_normalizer.unscale(x)
        level_emb = get_timestep_embedding(timesteps=level, embedding_dim=x.shape[-1], flip_sin_to_cos=True,
                                           downscale_freq_shift=0).to(x.dtype)
        return torch.cat((x, level_emb), 1)

    def conditioning(self, parents_a, parents_b, weights, generators):
        embeds = self.mixed_embedding(parents_a, parents_b, weights).to(self.dtype)
        noise = torch.stack([torch.randn(embeds.shape[1:], generator=g) for g in generators])
        labels = self.noise_image_embeddings(embeds, to_device(noise.to(self.dtype), self.device))
        text = self.prompt_embeds.expand(len(generators), -1, -1)
        return Conditioning(text, text, labels, torch.zeros_like(labels))

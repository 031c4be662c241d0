"""sd-text: Stable Diffusion text-to-image from class-name prompts, the baseline SD-Mixup answers.

A folder in the published StableDiffusionPipeline layout (text_encoder, tokenizer, unet, vae,
scheduler; a safety checker or feature extractor, if present, is not used). Per sample: the prompt
(a template with its class name, rendered by the worker) is encoded by the CLIP text encoder; the
unconditional branch is the empty prompt's embedding, as the stock pipeline without a negative
prompt; the initial latents come from the sample's own seed. The denoising loop, CFG, the
fixed-shape batches and the decode are the image-conditioned generators' (`DiffusionGenerator`).
"""
from __future__ import annotations

import torch

from ..config import GeneratorConfig
from .generators import Conditioning, DiffusionGenerator, encode_prompts


class TextToImage(DiffusionGenerator):
    image_conditioned = False

    def __init__(self, cfg: GeneratorConfig, device: torch.device, channels_last: bool = False):
        super().__init__(cfg, device, channels_last)
        from transformers import CLIPTextModel, CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(self.root / "tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(self.root / "text_encoder", dtype=self.dtype).to(device).eval()
        self.empty = self.encode([""])

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, self.device).to(self.dtype)

    def prompt(self, prompts: list[str], seeds):
        """uint8 images [B, 3, S, S] and a failure per sample (None when fine), one per prompt and seed."""
        return self.generate([prompts], seeds, self.conditioning)

    def conditioning(self, prompts, generators):
        context = self.encode(prompts)
        return Conditioning(context, self.empty.expand(len(prompts), -1, -1))

    def mix(self, parents_a, parents_b, weights, seeds):
        raise TypeError("sd-text makes images from prompts (`prompt`), not from parent pairs")

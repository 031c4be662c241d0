"""`tsd convert`: an original single-file (CompVis LDM layout) image-variation checkpoint, such as
lambdalabs/image-mixer's `image-mixer-pruned.ckpt`, → the diffusers folder the generators load
(unet/, vae/, scheduler/, image_encoder/, feature_extractor/, model_index.json).

- Reading the checkpoint never executes code: safetensors, or `torch.load(weights_only=True)`.
- UNet and VAE: diffusers' own single-file conversion (`diffusers.loaders.single_file_utils`:
  `create_*_diffusers_config_from_ldm`, `convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`)
  with the original config passed explicitly, so nothing is fetched: the checkpoint's YAML
  (`--config`), else ImageMixer's SD-1.x values (`ldm_config()`).
- Image encoder: a transformers CLIPVisionModelWithProjection folder when given (ImageMixer's demo
  embeds with the stock OpenAI ViT-L/14, i.e. openai/clip-vit-large-patch14), else the
  checkpoint's `cond_stage_model` (ldm's FrozenCLIPImageEmbedder: OpenAI CLIP under
  `cond_stage_model.model.visual.`), mapped here to transformers' layout.
- Scheduler: diffusers' DDIM on the checkpoint's schedule (LDM 'linear' = diffusers
  'scaled_linear'), checked against the checkpoint's own `alphas_cumprod` when it has them:
  'leading' + steps_offset 1 + final alpha ᾱ_0, which at 30 steps runs the 30 timesteps 958 … 1 of
  ImageMixer's own repo (`generator.scheduler: ldm-ddim-fork`; other step counts differ). The
  paper's recipes sample with `ldm-ddim` (CompVis ldm's 'uniform' table, S=30: 31 timesteps
  991 … 1), which reads only the betas from this config (models.ldm_ddim).
"""
from __future__ import annotations

import math
import pickle
import shutil
from pathlib import Path

import torch

from ..contract.errors import UserError, first_line
from ..contract.files import plain_modes
from ..contract.generators import LDM_KINDS
from ..contract.weights import weights_problem

CLIP_VISUAL = "cond_stage_model.model.visual."
OPENAI_CLIP_HEAD_DIM = 64   # OpenAI CLIP: heads = width // 64


def ldm_config(model_channels: int = 320, channel_mult=(1, 2, 4, 4), num_res_blocks: int = 2,
               attention_resolutions=(4, 2, 1), num_heads: int = 8, context_dim: int = 768,
               vae_ch: int = 128, vae_ch_mult=(1, 2, 4, 4), vae_res_blocks: int = 2,
               linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000,
               scale_factor: float = 0.18215) -> dict:
    """The original LDM inference config of an SD-1.x image-variation model; the defaults are
    ImageMixer's (SD-1.x UNet, cross-attention on CLIP ViT-L/14 projected image embeddings,
    context_dim 768, cond_stage_key image)."""
    return {"model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": linear_start, "linear_end": linear_end, "timesteps": timesteps,
            "first_stage_key": "jpg", "cond_stage_key": "image", "image_size": 64, "channels": 4,
            "conditioning_key": "crossattn", "scale_factor": scale_factor,
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
                "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": model_channels,
                "attention_resolutions": list(attention_resolutions), "num_res_blocks": num_res_blocks,
                "channel_mult": list(channel_mult), "num_heads": num_heads, "use_spatial_transformer": True,
                "transformer_depth": 1, "context_dim": context_dim, "legacy": False}},
            "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
                "embed_dim": 4, "ddconfig": {
                    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                    "ch": vae_ch, "ch_mult": list(vae_ch_mult), "num_res_blocks": vae_res_blocks,
                    "attn_resolutions": [], "dropout": 0.0}}},
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPImageEmbedder"},
        }}}


def _torch_load_tensors(path: Path):
    try:
        # mmap: a multi-GB checkpoint is paged in as tensors are used, not copied up front
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)   # legacy (pre-zip) format


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .ckpt/.pt file (Lightning's `state_dict` unwrapped),
    without executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    problem = weights_problem(str(path))   # a header check: a truncated download is one line
    if problem:
        raise UserError(problem)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = _torch_load_tensors(path)
    except pickle.UnpicklingError as e:   # the restricted unpickler met something other than tensors
        raise UserError(f"{path}: not loadable as plain tensors (torch.load weights_only=True refused it: "
                         f"{first_line(e)}); re-save its state_dict as .safetensors") from None
    while isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def openai_clip_vision_to_transformers(visual: dict[str, torch.Tensor]):
    """OpenAI CLIP's visual tower (keys relative to `visual.`) → (CLIPVisionConfig, state dict of
    CLIPVisionModelWithProjection). The architecture is read from the shapes."""
    from transformers import CLIPVisionConfig

    width, _, patch, _ = visual["conv1.weight"].shape
    grid = math.isqrt(visual["positional_embedding"].shape[0] - 1)
    layers = 1 + max(int(k.split(".")[2]) for k in visual if k.startswith("transformer.resblocks."))
    config = CLIPVisionConfig(
        hidden_size=width, intermediate_size=visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=layers, num_attention_heads=width // OPENAI_CLIP_HEAD_DIM, patch_size=patch,
        image_size=grid * patch, projection_dim=visual["proj"].shape[1], hidden_act="quick_gelu",
        layer_norm_eps=1e-5)
    v = "vision_model."
    state = {v + "embeddings.patch_embedding.weight": visual["conv1.weight"],
             v + "embeddings.class_embedding": visual["class_embedding"],
             v + "embeddings.position_embedding.weight": visual["positional_embedding"],
             v + "pre_layrnorm.weight": visual["ln_pre.weight"], v + "pre_layrnorm.bias": visual["ln_pre.bias"],
             v + "post_layernorm.weight": visual["ln_post.weight"], v + "post_layernorm.bias": visual["ln_post.bias"],
             "visual_projection.weight": visual["proj"].T.contiguous()}
    for i in range(layers):
        oa, hf = f"transformer.resblocks.{i}.", f"{v}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for name, part in zip("qkv", visual[f"{oa}attn.in_proj_{kind}"].chunk(3)):
                state[f"{hf}self_attn.{name}_proj.{kind}"] = part.contiguous()
            state[f"{hf}self_attn.out_proj.{kind}"] = visual[f"{oa}attn.out_proj.{kind}"]
            state[f"{hf}layer_norm1.{kind}"] = visual[f"{oa}ln_1.{kind}"]
            state[f"{hf}layer_norm2.{kind}"] = visual[f"{oa}ln_2.{kind}"]
            state[f"{hf}mlp.fc1.{kind}"] = visual[f"{oa}mlp.c_fc.{kind}"]
            state[f"{hf}mlp.fc2.{kind}"] = visual[f"{oa}mlp.c_proj.{kind}"]
    return config, state


def _load_converted(model_factory, convert, what: str, on_meta: bool = True):
    """model_factory() loaded strictly with convert(); a checkpoint that does not fit the config
    (diffusers' converters then miss keys, or shapes differ) becomes one clear error. `on_meta`:
    built without memory and random init (minutes for an 860M UNet on a CPU), the checkpoint's
    tensors assigned as its parameters; only for models without non-persistent buffers, which
    would stay unmaterialised (diffusers' UNet and VAE have none; transformers' CLIP has one)."""
    try:
        if on_meta:
            with torch.device("meta"):
                model = model_factory()
        else:
            model = model_factory()
        model.load_state_dict({k: v.contiguous() for k, v in convert().items()}, strict=True, assign=on_meta)
        return model
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{what}: the checkpoint does not match the config ({first_line(e)[:200]}); "
                         "pass the checkpoint's own YAML with --config") from None


def _clip_processor(size: int):
    """CLIPImageProcessor's defaults are OpenAI CLIP's preprocessing (bicubic short side, centre crop, mean/std)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _image_encoder(checkpoint: dict, image_encoder: str | Path | None):
    """(CLIPVisionModelWithProjection, CLIPImageProcessor, where it came from)."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    if image_encoder is not None:
        folder = Path(image_encoder)
        encoder = CLIPVisionModelWithProjection.from_pretrained(folder)
        if (folder / "preprocessor_config.json").is_file():
            return encoder, CLIPImageProcessor.from_pretrained(folder), str(folder)
        return encoder, _clip_processor(encoder.config.image_size), str(folder)
    visual = {k[len(CLIP_VISUAL):]: v for k, v in checkpoint.items() if k.startswith(CLIP_VISUAL)}
    if not visual:
        raise UserError("the checkpoint has no CLIP image encoder (no cond_stage_model.model.visual.* weights): "
                         "pass --image-encoder DIR (a transformers CLIPVisionModelWithProjection folder, "
                         "e.g. openai/clip-vit-large-patch14)")
    config, state = openai_clip_vision_to_transformers(visual)
    encoder = _load_converted(lambda: CLIPVisionModelWithProjection(config), lambda: state, "image encoder",
                              on_meta=False)
    return encoder, _clip_processor(config.image_size), "checkpoint cond_stage_model"


def _scheduler(params: dict, checkpoint: dict):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        num_train_timesteps=params.get("timesteps", 1000), beta_start=params.get("linear_start", 0.00085),
        beta_end=params.get("linear_end", 0.012), beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
        prediction_type="v_prediction" if params.get("parameterization") == "v" else "epsilon")
    if "alphas_cumprod" in checkpoint:
        theirs, ours = checkpoint["alphas_cumprod"].float(), scheduler.alphas_cumprod
        if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-5):
            raise UserError("the checkpoint's alphas_cumprod differ from the config's schedule "
                             "(linear_start/linear_end/timesteps): pass the checkpoint's own YAML with --config")
    return scheduler


def convert_ldm_checkpoint(ckpt_path: str | Path, out_dir: str | Path, kind: str = "image-mixer",
                           original_config: str | Path | dict | None = None,
                           image_encoder: str | Path | None = None) -> dict:
    """Write the diffusers folder `out_dir` from an LDM-layout checkpoint; returns a summary.
    The folder appears complete or not at all (written beside it, then renamed)."""
    import yaml
    from diffusers import AutoencoderKL, StableDiffusionImageVariationPipeline, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    if kind not in LDM_KINDS:
        raise UserError(f"kind: unknown {kind!r} (known: {', '.join(LDM_KINDS)})")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty")
    if original_config is None:
        original_config = ldm_config()
    elif not isinstance(original_config, dict):
        original_config = yaml.safe_load(Path(original_config).read_text())
    checkpoint = load_checkpoint(ckpt_path)
    if not any(k.startswith(sfu.LDM_UNET_KEY) for k in checkpoint):
        raise UserError(f"{ckpt_path}: no {sfu.LDM_UNET_KEY}* weights: not an LDM-layout checkpoint")

    unet_config = sfu.create_unet_diffusers_config_from_ldm(original_config, checkpoint)
    # EMA weights when the checkpoint has them (diffusers takes them only if present): better for sampling
    unet = _load_converted(lambda: UNet2DConditionModel(**unet_config),
                           lambda: sfu.convert_ldm_unet_checkpoint(checkpoint, unet_config, extract_ema=True), "unet")
    vae_config = sfu.create_vae_diffusers_config_from_ldm(original_config, checkpoint)
    vae = _load_converted(lambda: AutoencoderKL(**vae_config),
                          lambda: sfu.convert_ldm_vae_checkpoint(checkpoint, vae_config), "vae")
    encoder, processor, encoder_source = _image_encoder(checkpoint, image_encoder)
    if encoder.config.projection_dim != unet.config.cross_attention_dim:
        raise UserError(f"image encoder projects to {encoder.config.projection_dim} dims but the UNet attends to "
                         f"{unet.config.cross_attention_dim}")
    scheduler = _scheduler(original_config["model"]["params"], checkpoint)

    pipe = StableDiffusionImageVariationPipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler, feature_extractor=processor,
        safety_checker=None, requires_safety_checker=False)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    plain_modes(tmp)   # diffusers writes its weight files 0600
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return {"out": str(out), "kind": kind, "image_encoder": encoder_source,
            "unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 3)}


def add_arguments(p) -> None:
    p.add_argument("ckpt", help="original checkpoint (.ckpt or .safetensors)")
    p.add_argument("--out", required=True, help="diffusers folder to write")
    p.add_argument("--kind", default="image-mixer", choices=LDM_KINDS,
                   help="the generator the checkpoint is (both: the SD-1.x image-variation architecture)")
    p.add_argument("--config", default=None, help="the checkpoint's original inference YAML (default: SD-1.x)")
    p.add_argument("--image-encoder", default=None,
                   help="a CLIP vision folder (e.g. openai/clip-vit-large-patch14) when the checkpoint has none")


def run(args) -> int:
    """`tsd convert CKPT --out DIR [--kind image-mixer] [--config YAML] [--image-encoder DIR]`."""
    from ..runtime import quiet_libraries

    quiet_libraries()
    summary = convert_ldm_checkpoint(args.ckpt, args.out, args.kind, args.config, args.image_encoder)
    print(f"convert: {args.ckpt} → {summary['out']} ({summary['kind']}: UNet {summary['unet_params_M']} M params, "
          f"image encoder from {summary['image_encoder']})")
    return 0

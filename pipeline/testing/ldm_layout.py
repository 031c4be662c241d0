"""diffusers / transformers models → the original single-file (CompVis LDM) layout, as the
checkpoints users download are (ImageMixer's `image-mixer-pruned.ckpt`): the inverse of
`models.convert`. The demo writes its models this way so that `tsd convert` reads the layout it
will meet; the tests check the round trip.
"""
from __future__ import annotations

import torch


def unet_to_ldm(state: dict, config) -> dict:
    """diffusers UNet2DConditionModel keys → the original LDM UNet's (`model.diffusion_model.*`),
    for any number of levels and layers per level: the inverse of diffusers'
    `convert_ldm_unet_checkpoint` (diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py
    hard-codes SD's 4 levels × 2 layers)."""
    n, levels = config.layers_per_block, len(config.block_out_channels)
    prefixes = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
                "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                "mid_block.resnets.1.": "middle_block.2."}
    for i in range(levels):
        for j in range(n):
            prefixes[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{1 + i * (n + 1) + j}.0."
            prefixes[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{1 + i * (n + 1) + j}.1."
        for j in range(n + 1):
            prefixes[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{i * (n + 1) + j}.0."
            prefixes[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{i * (n + 1) + j}.1."
        if i < levels - 1:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (n + 1)}.0.op."
            after_attention = config.up_block_types[i].startswith("CrossAttn")
            prefixes[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (n + 1) + n}.{2 if after_attention else 1}."
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    out = {}
    for key, value in state.items():
        prefix = next(p for p in prefixes if key.startswith(p))
        rest = key[len(prefix):]
        if ".resnets." in prefix:
            head, tail = rest.split(".", 1)
            rest = f"{resnet[head]}.{tail}"
        out["model.diffusion_model." + prefixes[prefix] + rest] = value
    return out


def vae_to_ldm(state: dict, config) -> dict:
    """diffusers AutoencoderKL keys → the original LDM autoencoder's (`first_stage_model.*`); the
    mid-block attention's linear layers become the 1×1 convolutions LDM uses."""
    levels = len(config.block_out_channels)
    prefixes = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for i in range(levels):
        up = levels - 1 - i   # LDM numbers the decoder's levels from the lowest resolution up
        for j in range(config.layers_per_block):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        for j in range(config.layers_per_block + 1):
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{up}.block.{j}."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{up}.upsample."
    attention = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out = {}
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), "")
        rest = key[len(prefix):]
        if prefix.endswith("attentions.0."):
            head = next(a for a in attention if rest.startswith(a))
            rest = attention[head] + rest[len(head):]
            if value.ndim == 2:
                value = value[:, :, None, None]
        elif ".resnets." in prefix:
            rest = rest.replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + prefixes.get(prefix, "") + rest] = value
    return out


def clip_vision_to_openai(state: dict) -> dict:
    """transformers CLIPVisionModelWithProjection keys → OpenAI CLIP's `visual.*` (fused qkv
    in_proj, `proj` as [width, dim]), as ldm's FrozenCLIPImageEmbedder stores them under
    `cond_stage_model.model.visual.`."""
    v = "vision_model."
    out = {"conv1.weight": state[v + "embeddings.patch_embedding.weight"],
           "class_embedding": state[v + "embeddings.class_embedding"],
           "positional_embedding": state[v + "embeddings.position_embedding.weight"],
           "ln_pre.weight": state[v + "pre_layrnorm.weight"], "ln_pre.bias": state[v + "pre_layrnorm.bias"],
           "ln_post.weight": state[v + "post_layernorm.weight"], "ln_post.bias": state[v + "post_layernorm.bias"],
           "proj": state["visual_projection.weight"].T.contiguous()}
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith(v + "encoder.layers.")})
    for i in layers:
        hf, oa = f"{v}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{oa}attn.in_proj_{kind}"] = torch.cat([state[f"{hf}self_attn.{q}_proj.{kind}"] for q in "qkv"])
            out[f"{oa}attn.out_proj.{kind}"] = state[f"{hf}self_attn.out_proj.{kind}"]
            out[f"{oa}ln_1.{kind}"] = state[f"{hf}layer_norm1.{kind}"]
            out[f"{oa}ln_2.{kind}"] = state[f"{hf}layer_norm2.{kind}"]
            out[f"{oa}mlp.c_fc.{kind}"] = state[f"{hf}mlp.fc1.{kind}"]
            out[f"{oa}mlp.c_proj.{kind}"] = state[f"{hf}mlp.fc2.{kind}"]
    return {"cond_stage_model.model.visual." + k: t for k, t in out.items()}

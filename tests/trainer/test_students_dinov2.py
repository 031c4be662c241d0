"""The DINOv2 ViT-S/14 student (timm vit_small_patch14_dinov2) from a weight file at the views' sizes:
built for 224 px from a file saved at DINOv2's 518 px (position embeddings resampled by timm on
load), and with dynamic_img_size at 224 and 518 px in one model. Random weights: nothing downloaded."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from pipeline.contract.configlib import ConfigError
from trainer.students import build_student

ARCH = "vit_small_patch14_dinov2"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A random ViT-S/14 saved like the published timm weights: 518 px grid (37 × 37 patches + CLS), no head."""
    torch.manual_seed(0)
    model = timm.create_model(ARCH, pretrained=False, num_classes=0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    path = tmp_path_factory.mktemp("vits14") / "model.safetensors"
    save_file(state, str(path))
    return path, state


def test_built_for_224_px_resamples_the_position_embeddings(published):
    path, state = published
    torch.manual_seed(1)
    model = build_student(ARCH, 7, weights=str(path), model_kwargs={"img_size": 224}, img_size=224).eval()
    assert model.patch_embed.patch_size == (14, 14) and model.patch_embed.grid_size == (16, 16)
    # timm's own resampling of the file's 37 × 37 grid to 16 × 16 (the CLS token kept as is)
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=(16, 16), num_prefix_tokens=1)
    assert torch.allclose(model.pos_embed.detach(), expected, atol=1e-6)
    assert torch.equal(model.blocks[11].mlp.fc2.weight.detach(), state["blocks.11.mlp.fc2.weight"])
    assert model.head.weight.shape == (7, 384)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 7)


def test_dynamic_img_size_runs_224_and_518_px(published):
    path, state = published
    model = build_student(ARCH, 5, weights=str(path), model_kwargs={"dynamic_img_size": True}, img_size=224).eval()
    # the file's grid is kept; each input size resamples it in the forward pass
    assert torch.equal(model.pos_embed.detach(), state["pos_embed"])
    with torch.no_grad():
        small = model.forward_features(torch.randn(1, 3, 224, 224))
        large = model.forward_features(torch.randn(1, 3, 518, 518))
    assert small.shape == (1, 1 + 16 * 16, 384) and large.shape == (1, 1 + 37 * 37, 384)


def test_a_fixed_grid_at_another_size_is_one_config_line(published):
    path, _ = published
    with pytest.raises(ConfigError, match=r"student.img_size: 224, but vit_small_patch14_dinov2 is built for "
                                          r"\(518, 518\): set student.model_kwargs.img_size: 224"):
        build_student(ARCH, 5, weights=str(path), img_size=224)

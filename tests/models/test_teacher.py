"""The teacher's weights are assigned to a backbone built on the meta device (one copy in memory,
not timm's random init plus the file): the result must be exactly what timm's own loading gives,
and anything the fast path cannot take whole (another format, a buffer no file holds, keys that
differ) must fall back to timm's loading."""
from __future__ import annotations

import timm
import torch
from safetensors.torch import save_file

from pipeline.config import TeacherConfig
from pipeline.contract.configlib import build
from pipeline.models.teacher import _assigned, load_backbone


def _timm_loaded(arch, path, **kwargs):
    return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=0,
                             **kwargs).eval()


def _same(a, b, size):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def _save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_dinov2_weights_are_assigned_and_equal_timms_loading(tmp_path):
    """Saved at 70 px, loaded at 56: timm's checkpoint filter resamples the position embeddings."""
    kw = dict(embed_dim=192, depth=2, num_heads=3)
    path = _save(timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=70, **kw), tmp_path / "t.safetensors")
    assert _assigned("vit_small_patch14_dinov2", str(path), dict(kw, img_size=56)) is not None
    cfg = build(TeacherConfig, {"arch": "vit_small_patch14_dinov2", "weights": str(path), "img_size": 56,
                                "model_kwargs": kw})
    loaded = load_backbone(cfg)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    _same(loaded, _timm_loaded("vit_small_patch14_dinov2", path, img_size=56, **kw), 56)


def test_what_the_fast_path_cannot_take_whole_falls_back_to_timm(tmp_path):
    # EVA-02's rotary embeddings are buffers no weight file holds
    kw = dict(img_size=28, embed_dim=64, depth=1, num_heads=2)
    eva = _save(timm.create_model("eva02_tiny_patch14_224", num_classes=0, **kw), tmp_path / "eva.safetensors")
    assert _assigned("eva02_tiny_patch14_224", str(eva), kw) is None
    cfg = build(TeacherConfig, {"arch": "eva02_tiny_patch14_224", "weights": str(eva), "img_size": 28,
                                "model_kwargs": {k: v for k, v in kw.items() if k != "img_size"}})
    _same(load_backbone(cfg), _timm_loaded("eva02_tiny_patch14_224", eva, **kw), 28)
    # a file with a key the model lacks: timm decides (here: it refuses, as before)
    vit_kw = dict(embed_dim=64, depth=1, num_heads=2, img_size=28)
    state = timm.create_model("vit_small_patch14_dinov2", num_classes=0, **vit_kw).state_dict()
    extra = tmp_path / "extra.safetensors"
    save_file({**{k: v.contiguous() for k, v in state.items()}, "stray": torch.zeros(1)}, str(extra))
    assert _assigned("vit_small_patch14_dinov2", str(extra), vit_kw) is None
    # not safetensors: timm's loading
    pth = tmp_path / "t.pth"
    torch.save(state, pth)
    assert _assigned("vit_small_patch14_dinov2", str(pth), vit_kw) is None

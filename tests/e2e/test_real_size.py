"""`tsd demo --real-size`: the published model layouts and their sizes.

By default: the published layouts counted on the meta device (no memory: the counts the real files
must have), and the same writers at tiny sizes loaded back through the recipes' loaders (timm's
file overlay, `tsd convert`, the generator). The real-size run itself (< 25 min, ~10 GiB) and its
tiny rehearsal are behind the `slow_real` marker:

    python -m pytest -q -m slow_real tests/e2e/test_real_size.py
"""
import json
import os
import re
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline.demo import published  # noqa: E402
from pipeline.demo.published import PUBLISHED, REHEARSAL, paths  # noqa: E402

# published parameter counts (timm / transformers / the ImageMixer checkpoint's arithmetic: 5.14 GB fp32)
PUBLISHED_COUNTS = {"vit_giant_patch14_dinov2": 1_136_479_232, "clip-vit-large-patch14": 427_616_513,
                    "resnet50": 25_557_032, "vit_small_patch16_224": 22_050_664}
CKPT = {"UNet": (686, 859_520_964), "VAE": (248, 83_653_863), "CLIP visual": (296, 303_966_208),
        "CLIP text-side leftovers": (6, 38_595_841), "schedule buffers": (12, 12_000), "EMA bookkeeping": (2, 2)}


def numel(module) -> int:
    return sum(t.numel() for t in module.parameters())


def test_published_layouts_have_the_published_sizes():
    """On the meta device: image-mixer-pruned.ckpt's 1,250 tensors, 1,285,736,876 weights (5.14 GB
    in fp32, the size of the real file), and the timm / transformers models at their hub sizes."""
    import timm
    from transformers import CLIPConfig, CLIPModel

    with torch.device("meta"):
        clip = CLIPModel(CLIPConfig(**PUBLISHED.clip))
        teacher = timm.create_model(PUBLISHED.teacher_arch, pretrained=False, num_classes=0)
        students = {s.arch: timm.create_model(s.arch, pretrained=False) for s in PUBLISHED.students}
    assert numel(clip) == PUBLISHED_COUNTS["clip-vit-large-patch14"]
    assert numel(teacher) == PUBLISHED_COUNTS["vit_giant_patch14_dinov2"]
    assert teacher.pos_embed.shape == (1, 1 + 37 * 37, 1536)   # the hub file's 518 px grid
    assert {a: numel(m) for a, m in students.items()} == {a: PUBLISHED_COUNTS[a] for a in students}
    state = published.image_mixer_state(PUBLISHED, clip.state_dict(), device="meta")
    groups = {name: [0, 0] for name in CKPT}
    for key, value in state.items():
        name = next(n for n, prefix in published.CKPT_GROUPS if key.startswith(prefix))
        groups[name][0] += 1
        groups[name][1] += value.numel()
    assert {k: tuple(v) for k, v in groups.items()} == CKPT
    weights = sum(CKPT[k][1] for k in ("UNet", "VAE", "CLIP visual", "CLIP text-side leftovers"))
    assert weights == 1_285_736_876 and weights * 4 == 5_142_947_504
    assert state["cond_stage_model.model.visual.proj"].shape == (1024, 768)
    assert state["cond_stage_model.model.visual.transformer.resblocks.23.attn.in_proj_weight"].shape == (3072, 1024)
    assert "lvlb_weights" not in state and not any(k.startswith("model_ema.diffusion") for k in state)


def test_the_schedule_buffers_are_ldms():
    s = published.ldm_schedule()
    assert float(s["alphas_cumprod"][0]) == pytest.approx(0.99915, abs=1e-7)
    assert float(s["alphas_cumprod"][991]) == pytest.approx(0.0051300661, rel=1e-5)
    assert float(s["alphas_cumprod_prev"][0]) == 1.0 and all(v.dtype == torch.float32 for v in s.values())


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    models = tmp_path_factory.mktemp("published-layouts")
    published.write_teacher(models, REHEARSAL)
    published.write_clip(models, REHEARSAL)
    published.write_image_mixer(models, REHEARSAL)
    for s in REHEARSAL.students:
        published.write_student(models, REHEARSAL, s)
    return paths(models, REHEARSAL)


def test_the_files_load_through_the_recipes_loaders(rehearsal, tmp_path):
    """The writers' files, read the way the paper's recipes read the real ones: the timm hub file
    through timm's file overlay (its 518 px grid resampled), the checkpoint with weights_only, the
    CLIP folder by `tsd convert --image-encoder`, the converted folder by the generator."""
    from safetensors.torch import load_file

    from pipeline.config import GeneratorConfig, TeacherConfig
    from pipeline.models.build import build_generator
    from pipeline.models.teacher import load_backbone

    p = rehearsal
    backbone = load_backbone(TeacherConfig(arch=REHEARSAL.teacher_arch, weights=str(p["teacher"]), img_size=56,
                                           model_kwargs=dict(REHEARSAL.teacher_kwargs)))
    file_state = load_file(str(p["teacher"]))
    assert torch.equal(backbone.blocks[1].mlp.fc2.weight, file_state["blocks.1.mlp.fc2.weight"])
    assert backbone.pos_embed.shape[1] == 1 + 4 * 4 and file_state["pos_embed"].shape[1] == 1 + 37 * 37

    ckpt = torch.load(p["image-mixer"], map_location="cpu", weights_only=True, mmap=True)
    assert set(ckpt) == {"state_dict", "global_step", "epoch", "pytorch-lightning_version"}
    clip = load_file(str(p["clip"] / "model.safetensors"))
    # ImageMixer never trained its CLIP: the checkpoint's visual tower is the CLIP folder's
    assert torch.equal(ckpt["state_dict"]["cond_stage_model.model.visual.proj"], clip["visual_projection.weight"].T)

    out = tmp_path / "image-mixer-diffusers"
    assert cli.main(["convert", str(p["image-mixer"]), "--out", str(out), "--config", str(p["image-mixer-config"]),
                     "--image-encoder", str(p["clip"])]) == 0
    converted = load_file(str(out / "image_encoder" / "model.safetensors"))
    assert torch.equal(converted["visual_projection.weight"], clip["visual_projection.weight"])
    gen = build_generator(GeneratorConfig(kind="image-mixer", path=str(out), size=64, steps=2, scheduler="ldm-ddim",
                                          batch_size=1), torch.device("cpu"))
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mixed, failures = gen.mix([image], [image.flip(2)], [0.5], [1])
    assert mixed.shape == (1, 3, 64, 64) and failures == [None]

    counts = published.count_checkpoint(p["image-mixer"])
    assert counts["UNet"]["params"] == sum(t.numel() for t in gen.unet.state_dict().values())
    assert counts["VAE"]["params"] == sum(t.numel() for t in gen.vae.state_dict().values())
    assert published.count_safetensors(p["teacher"]) == sum(t.numel() for t in file_state.values())
    for s in REHEARSAL.students:
        state = load_file(str(p[s.arch]))
        assert published.count_safetensors(p[s.arch]) == sum(v.numel() for k, v in state.items() if "running_" not in k
                                                              and "num_batches" not in k)


# -- the runs themselves (not in the default run) ----------------------------------------------------------
@pytest.mark.slow_real
def test_rehearsal_runs_every_stage(tmp_path):
    """The real-size runner with tiny models: every stage, its table, a release that verifies."""
    from pipeline.demo.realsize import run_real_size

    summary = run_real_size(tmp_path / "rehearsal", "rehearsal")
    names = [s["name"] for s in summary["stages"]]
    assert names[:4] == ["model: teacher", "model: clip", "model: image-mixer", "model: students"]
    assert {"convert", "probe", "plan", "generate", "release", "verify"} <= set(names)
    assert next(s for s in summary["stages"] if s["name"] == "verify")["note"].endswith("OK")
    assert all(s["peak_rss_gib"] > 0 for s in summary["stages"])


@pytest.mark.slow_real
def test_real_size_demo(tmp_path):
    """`tsd demo --real-size` as a user runs it: under 25 min on 2 cores, the files counted
    independently against the published sizes, a release that verifies."""
    out = tmp_path / "real"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo", "--real-size", "--out", str(out)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "work" / "real-size-summary.json").read_text())
    assert summary["wall_s"] < 25 * 60, summary["wall_s"]
    assert re.search(r"verify\s.*OK", proc.stdout)
    p = paths(out / "work" / "models", PUBLISHED)
    assert published.count_safetensors(p["teacher"]) == PUBLISHED_COUNTS["vit_giant_patch14_dinov2"]
    assert published.count_safetensors(p["clip"] / "model.safetensors") == PUBLISHED_COUNTS["clip-vit-large-patch14"]
    assert {k: (v["tensors"], v["params"]) for k, v in published.count_checkpoint(p["image-mixer"]).items()} == CKPT
    for s in PUBLISHED.students:
        assert published.count_safetensors(p[s.arch]) == PUBLISHED_COUNTS[s.arch]
    verify = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(out)], capture_output=True, text=True)
    assert verify.returncode == 0

"""`tsd convert` on a tiny checkpoint in the original single-file LDM layout (as
lambdalabs/image-mixer's image-mixer-pruned.ckpt): the converted diffusers folder holds exactly the
original weights, loads in the generator and the stock pipeline, and generates what the original
models generate. Reading a checkpoint never runs code from it."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from pipeline import cli  # noqa: E402
from pipeline.config import GeneratorConfig  # noqa: E402
from pipeline.contract.errors import UserError  # noqa: E402
from pipeline.testing.tiny import build_ldm_checkpoint  # noqa: E402
from pipeline.models.build import build_generator  # noqa: E402
from pipeline.models.convert import CLIP_VISUAL, convert_ldm_checkpoint  # noqa: E402

COMPONENTS = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "image_encoder": "CLIPVisionModelWithProjection"}


@pytest.fixture(scope="module")
def ldm(tmp_path_factory):
    return build_ldm_checkpoint(tmp_path_factory.mktemp("ldm"))


def load(folder, component):
    import diffusers
    import transformers

    cls = getattr(diffusers, COMPONENTS[component], None) or getattr(transformers, COMPONENTS[component])
    return cls.from_pretrained(folder / component)


def assert_same_weights(folder, reference, components=COMPONENTS):
    for component in components:
        ours, theirs = load(folder, component).state_dict(), load(reference, component).state_dict()
        assert ours.keys() == theirs.keys(), component
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), component


def generate(folder):
    cfg = GeneratorConfig(kind="image-mixer", path=str(folder), size=64, steps=2, guidance=3.0, batch_size=1)
    parent_a = torch.arange(3 * 40 * 56, dtype=torch.int64).reshape(3, 40, 56).remainder(251).to(torch.uint8)
    return build_generator(cfg, torch.device("cpu")).mix([parent_a], [parent_a.flip(2)], [0.6], [5])[0]


def test_converted_folder_holds_the_original_weights_and_generates_the_same_images(ldm, tmp_path, capsys):
    from diffusers import StableDiffusionImageVariationPipeline

    out = tmp_path / "image-mixer"
    assert cli.main(["convert", str(ldm["ckpt"]), "--out", str(out), "--kind", "image-mixer",
                     "--config", str(ldm["config"])]) == 0
    assert "image encoder from checkpoint cond_stage_model" in capsys.readouterr().out
    assert_same_weights(out, ldm["reference"])
    for part in ("unet", "scheduler", "image_encoder", "feature_extractor"):   # same configs, too
        name = next((ldm["reference"] / part).glob("*.json")).name
        assert (out / part / name).read_text() == (ldm["reference"] / part / name).read_text(), part
    assert torch.equal(generate(out), generate(ldm["reference"]))
    StableDiffusionImageVariationPipeline.from_pretrained(out)   # the stock pipeline loads it too


def test_safetensors_input_and_an_image_encoder_given_separately(ldm, tmp_path):
    """A checkpoint without cond_stage_model needs --image-encoder (ImageMixer's demo embeds with
    the stock OpenAI ViT-L/14, a transformers folder); safetensors files load as well."""
    from safetensors.torch import save_file

    state = torch.load(ldm["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    pruned = tmp_path / "pruned.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}, str(pruned))
    with pytest.raises(ValueError, match="--image-encoder"):
        convert_ldm_checkpoint(pruned, tmp_path / "no-encoder", original_config=ldm["config"])
    out = tmp_path / "with-encoder"
    summary = convert_ldm_checkpoint(pruned, out, original_config=ldm["config"],
                                     image_encoder=ldm["reference"] / "image_encoder")
    assert summary["image_encoder"] == str(ldm["reference"] / "image_encoder")
    assert_same_weights(out, ldm["reference"])


def test_a_config_that_does_not_fit_the_checkpoint_is_a_clear_error(ldm, tmp_path):
    # the default config is ImageMixer's real SD-1.x size: the tiny checkpoint does not fit it
    with pytest.raises(ValueError, match="does not match the config.*--config"):
        convert_ldm_checkpoint(ldm["ckpt"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


class RunsCode:
    """Pickles as a call to open(): what a malicious checkpoint would smuggle in."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_reading_a_checkpoint_never_executes_code(ldm, tmp_path):
    state = torch.load(ldm["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state, "callback": RunsCode(marker)}, evil)
    with pytest.raises(ValueError, match="weights_only"):
        convert_ldm_checkpoint(evil, tmp_path / "out", original_config=ldm["config"])
    assert not marker.exists()


def test_refuses_to_write_into_a_non_empty_folder(ldm, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty"):
        convert_ldm_checkpoint(ldm["ckpt"], tmp_path / "out", original_config=ldm["config"])
    with pytest.raises(ValueError, match="kind"):
        convert_ldm_checkpoint(ldm["ckpt"], tmp_path / "other", kind="unclip")


def test_clip_visual_prefix_is_where_ldm_keeps_the_image_encoder(ldm):
    state = torch.load(ldm["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith(CLIP_VISUAL + "transformer.resblocks.0.attn.in_proj_weight") for k in state)
    assert any(k.startswith("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2") for k in state)
    assert state["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4   # LDM's 1×1 convolutions

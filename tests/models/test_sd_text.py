"""sd-text, the text-prompted baseline, on a tiny random-weight StableDiffusionPipeline folder (CPU,
fp32): an image depends on its seed and prompt only; a template without the class field is refused."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from pixels import same_image  # noqa: E402

from pipeline.config import GeneratorConfig, load_job  # noqa: E402
from pipeline.contract.configlib import ConfigError  # noqa: E402
from pipeline.contract.generators import render_prompt  # noqa: E402
from pipeline.models.build import build_generator  # noqa: E402
from pipeline.testing import tiny  # noqa: E402

CPU = torch.device("cpu")
PROMPTS = ["a photo of a cat.", "a photo of a dog.", "a photo of a bird.", "a photo of a cat."]
SEEDS = [11, 12, 13, 14]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny.build_sd_text(tmp_path_factory.mktemp("sd-text-model"), tiny.TinySizes())


@pytest.fixture(scope="module")
def generator(folder):
    cfg = GeneratorConfig(kind="sd-text", path=str(folder), size=64, steps=2, guidance=3.0, batch_size=3)
    return build_generator(cfg, CPU)


def test_the_folder_is_the_published_text_to_image_layout(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_an_image_depends_on_its_seed_and_prompt_only(generator):
    images, failures = generator.prompt(PROMPTS, SEEDS)
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.uint8 and failures == [None] * 4
    for i in (0, 3):   # alone (padded to the batch shape) or with others: the same image
        alone, _ = generator.prompt([PROMPTS[i]], [SEEDS[i]])
        assert same_image(alone[0], images[i]), i
    shuffled, _ = generator.prompt(PROMPTS[::-1], SEEDS[::-1])
    assert same_image(shuffled.flip(0), images)
    again, _ = generator.prompt(PROMPTS, SEEDS)
    assert torch.equal(again, images)   # the same call: bit for bit
    other_seed, _ = generator.prompt([PROMPTS[0]], [99])
    other_class, _ = generator.prompt([PROMPTS[1]], [SEEDS[0]])
    assert (other_seed[0].int() - images[0].int()).abs().float().mean() > 1
    assert (other_class[0].int() - images[0].int()).abs().float().mean() > 0.1


def test_the_prompt_is_what_the_text_encoder_sees(generator):
    """The conditioning is the CLIP text embedding of the prompt, the empty prompt's as the unconditional branch."""
    cond = generator.conditioning(["a photo of a cat."], [torch.Generator()])
    ids = generator.tokenizer(["a photo of a cat."], padding="max_length", max_length=77, return_tensors="pt")
    assert torch.equal(cond.context, generator.text_encoder(ids.input_ids)[0])
    empty = generator.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt")
    assert torch.equal(cond.uncond_context, generator.text_encoder(empty.input_ids)[0])


def test_render_prompt_fills_the_class_only():
    assert render_prompt("a photo of a {class}, a type of bird.", "Black footed Albatross") == \
        "a photo of a Black footed Albatross, a type of bird."
    assert render_prompt("{class} {x}", "cat") == "cat {x}"
    # CUB's folder-style names read as words; the class itself is recorded as named (prompt_class)
    assert render_prompt("a photo of a {class}, a type of bird.", "001.Black_footed_Albatross") == \
        "a photo of a Black footed Albatross, a type of bird."
    assert render_prompt("{class}", "3.5") == "3.5" and render_prompt("{class}", "12.") == "12."


def test_a_template_without_the_class_is_one_config_error_line(small_job, folder):
    with pytest.raises(ConfigError) as e:
        load_job(small_job["job_path"], {"generator": {"kind": "sd-text", "path": str(folder),
                                                      "prompts": ["a photo of a {class}.", "a photo of a bird."]}})
    assert "\n" not in str(e.value)
    assert "prompts[1]" in str(e.value) and "'a photo of a bird.'" in str(e.value) and "{class}" in str(e.value)


def test_sd_text_equals_the_stock_text_to_image_pipeline(folder):
    """The stock StableDiffusionPipeline on the same prompt and initial latents gives the same
    latents and the same image (our loop, CFG and decode are its math)."""
    from diffusers import StableDiffusionPipeline

    cfg = GeneratorConfig(kind="sd-text", path=str(folder), size=64, steps=2, guidance=3.0, batch_size=1)
    gen = build_generator(cfg, CPU)
    stock = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    prompt, seed = "a photo of a cat.", 21
    generators = [torch.Generator().manual_seed(seed)]
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))   # what the generator draws
    call = dict(prompt=prompt, height=64, width=64, num_inference_steps=2, guidance_scale=3.0, latents=noise)
    ours = gen.denoise(gen.conditioning([prompt], generators), generators)
    theirs = stock(**call, output_type="latent").images
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()
    image, _ = gen.prompt([prompt], [seed])
    reference = stock(**call, output_type="pt").images * 255
    assert (image.float() - reference).abs().max() <= 0.5 + 1e-3   # same float image, rounded once

"""The generators on tiny random-weight models saved in their real diffusers layouts (CPU, fp32):
shapes, determinism, batch independence, the fixed-shape padding, and equivalence with the stock
diffusers pipelines (the denoising loop, CFG and decode are the stock math)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from pixels import same_image  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.config import GeneratorConfig  # noqa: E402
from pipeline.testing import tiny  # noqa: E402
from pipeline.contract.generators import GENERATORS  # noqa: E402
from pipeline.models.generators import lerp, slerp, strengths  # noqa: E402
from pipeline.models.build import build_generator  # noqa: E402

CPU = torch.device("cpu")
DIFFUSION = ("image-mixer", "sd-image-variations", "unclip")
SIZE, STEPS, GUIDANCE = 64, 2, 3.0


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("generator-models")
    sizes = tiny.TinySizes()
    return {"image-mixer": tiny.build_image_mixer(root, sizes),
            "sd-image-variations": tiny.build_sd_image_variations(root, sizes),
            "unclip": tiny.build_unclip(root, sizes)}


def make(folders, kind, **overrides):
    settings = dict(kind=kind, path=str(folders[kind]), size=SIZE, steps=STEPS, guidance=GUIDANCE, batch_size=2,
                    noise_level=100)
    return build_generator(GeneratorConfig(**{**settings, **overrides}), CPU)


@pytest.fixture(scope="module")
def generators(folders):
    return {kind: make(folders, kind) for kind in DIFFUSION}


def smooth_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A uint8 CHW image with structure at every scale (a bicubic upsampling of random colours)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 4, 5, generator=g)
    x = torch.nn.functional.interpolate(base, size=(h, w), mode="bicubic", align_corners=False)[0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


# parents of various sizes and aspect ratios
PARENTS_A = [smooth_image(75, 100, 1), smooth_image(120, 90, 2), smooth_image(40, 40, 3), smooth_image(64, 150, 4)]
PARENTS_B = [smooth_image(90, 70, 5), smooth_image(50, 80, 6), smooth_image(100, 100, 7), smooth_image(33, 47, 8)]
WEIGHTS = [0.3, 0.5, 0.8, 1.0]
SEEDS = [11, 12, 13, 14]


def test_registry_covers_every_configurable_kind():
    """Every kind the config accepts has an implementation to build (imported, not only named)."""
    import importlib

    import typing

    configurable = typing.get_args(typing.get_type_hints(GeneratorConfig)["kind"])
    assert set(GENERATORS) == set(configurable)
    for kind in GENERATORS.values():
        module, cls = kind.implementation.split(":")
        assert callable(getattr(importlib.import_module(module), cls)), kind.name


@pytest.mark.parametrize("kind", DIFFUSION)
def test_an_image_depends_on_its_seed_and_parents_only(generators, kind):
    """Right size and type; the same sample gives the same image alone, or in another batch at
    another position (within a level: see same_image); another seed gives another image."""
    gen = generators[kind]   # batch_size 2
    pair, failures = gen.mix(PARENTS_A[:2], PARENTS_B[:2], WEIGHTS[:2], SEEDS[:2])
    assert pair.shape == (2, 3, SIZE, SIZE) and pair.dtype == torch.uint8 and pair.device == CPU
    assert failures == [None, None]
    alone, _ = gen.mix(PARENTS_A[:1], PARENTS_B[:1], WEIGHTS[:1], SEEDS[:1])
    moved, _ = gen.mix(PARENTS_A[:1] * 2, PARENTS_B[:1] * 2, WEIGHTS[:1] * 2, [99, SEEDS[0]])
    assert same_image(alone[0], pair[0]) and same_image(moved[1], pair[0])
    assert not same_image(moved[0], pair[0])
    again, _ = gen.mix(PARENTS_A[:2], PARENTS_B[:2], WEIGHTS[:2], SEEDS[:2])
    assert torch.equal(again, pair)   # the same call: bit for bit



def test_more_samples_than_the_batch_are_split_and_the_last_batch_padded(folders):
    """The padding path (what keeps a compiled UNet at one shape; compile itself is GPU-only, so
    this runs eagerly): 4 samples at batch size 3 = one full batch + one padded, and the padded
    sample's image is the one it gets in any other batch."""
    gen = make(folders, "unclip", batch_size=3, compile=True)
    images, failures = gen.mix(PARENTS_A, PARENTS_B, WEIGHTS, SEEDS)
    assert images.shape == (4, 3, SIZE, SIZE) and failures == [None] * 4
    last, _ = gen.mix(PARENTS_A[2:4], PARENTS_B[2:4], WEIGHTS[2:4], SEEDS[2:4])
    assert same_image(images[2:], last)
    again, _ = gen.mix(PARENTS_A[2:4], PARENTS_B[2:4], WEIGHTS[2:4], SEEDS[2:4])
    assert torch.equal(again, last)   # the same call: bit for bit


# -- equivalence with the stock diffusers pipelines --------------------------------------------------
def start_noise(gen, seed: int) -> torch.Tensor:
    """What the generator draws for a sample: randn from a CPU generator seeded with the seed."""
    side = SIZE // gen.vae_scale
    return torch.randn((1, 4, side, side), generator=torch.Generator().manual_seed(seed))


def test_sd_image_variations_equals_the_stock_pipeline(folders):
    """Weight 1.0 with lerp is parent A alone: the stock StableDiffusionImageVariationPipeline on the
    same pixels (our preprocessing, passed as the tensor the pipeline accepts) and the same initial
    latents must give the same latents and the same image."""
    from diffusers import StableDiffusionImageVariationPipeline

    gen = make(folders, "sd-image-variations", interpolation="lerp", batch_size=1)
    stock = StableDiffusionImageVariationPipeline.from_pretrained(folders["sd-image-variations"])
    stock.set_progress_bar_config(disable=True)
    a, b, seed = PARENTS_A[0], PARENTS_B[0], 21
    call = dict(image=gen.clip_pixels([a]), height=SIZE, width=SIZE, num_inference_steps=STEPS,
                guidance_scale=GUIDANCE)
    generators = [torch.Generator().manual_seed(seed)]
    ours = gen.denoise(gen.conditioning([a], [b], [1.0], generators), generators)
    theirs = stock(**call, latents=start_noise(gen, seed), output_type="latent").images
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()
    image, _ = gen.mix([a], [b], [1.0], [seed])
    reference = stock(**call, latents=start_noise(gen, seed), output_type="pt").images * 255
    assert (image.float() - reference).abs().max() <= 0.5 + 1e-3   # same float image, rounded once


def imagemixer_demo_conditioning(embed, inputs, n_inputs=5, dim=None):
    """ImageMixer's conditioning re-derived from its demo (justinpinkney/stable-diffusion,
    scripts/gradio_image_mixer.py): per UI slot, `s * get_im_c(im)` for an image and
    `torch.zeros((1, 768))` for "Nothing"; `conds = torch.cat(conds, 0).unsqueeze(0)`;
    `uc = 0 * conds`. `get_im_c` is CLIP's `encode_image` on the stock preprocessing, unnormalised."""
    conds = []
    for slot in range(n_inputs):
        if slot < len(inputs):
            image, strength = inputs[slot]
            conds.append(strength * embed(image))
        else:
            conds.append(torch.zeros((1, dim)))
    conds = torch.cat(conds, 0).unsqueeze(0)
    return conds, 0 * conds


def test_image_mixer_context_is_imagemixers_five_slots(generators, folders):
    """5 slots, the two parents' scaled embeddings in the first two, zeros in the other three; the
    unconditional branch all zeros of the same shape; against the demo's own construction, with
    the folder's CLIPImageProcessor (PIL) and image encoder standing in for `clip.load`."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    gen = generators["image-mixer"]
    assert gen.cfg.tokens == 5
    processor = CLIPImageProcessor.from_pretrained(folders["image-mixer"] / "feature_extractor")
    encoder = CLIPVisionModelWithProjection.from_pretrained(folders["image-mixer"] / "image_encoder").eval()

    def get_im_c(image):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        with torch.no_grad():
            return encoder(processor(images=pil, return_tensors="pt").pixel_values).image_embeds.float()

    dim = encoder.config.projection_dim
    with torch.no_grad():
        cond = gen.conditioning(PARENTS_A[:2], PARENTS_B[:2], WEIGHTS[:2], [torch.Generator()] * 2)
    assert cond.context.shape == cond.uncond_context.shape == (2, 5, dim)
    for i in range(2):
        s_a, s_b = strengths(WEIGHTS[i])
        conds, uc = imagemixer_demo_conditioning(get_im_c, [(PARENTS_A[i], s_a), (PARENTS_B[i], s_b)], dim=dim)
        ours = cond.context[i:i + 1]
        assert torch.equal(ours[:, 2:], conds[:, 2:]) and torch.equal(cond.uncond_context[i:i + 1], uc)
        # live slots: our tensor preprocessing vs PIL's two uint8 passes (≤ 3 levels), through CLIP
        assert torch.allclose(ours[:, :2], conds[:, :2], atol=0.05 * conds.abs().max().item()), (ours, conds)
        assert not torch.equal(ours[:, 0], torch.zeros_like(ours[:, 0]))
    # the slot count is a setting; fewer slots change the image (zero slots still take softmax mass)
    two = make(folders, "image-mixer", tokens=2, batch_size=1)
    assert two.conditioning(PARENTS_A[:1], PARENTS_B[:1], [0.5], [torch.Generator()]).context.shape == (1, 2, dim)
    assert not torch.equal(two.mix(PARENTS_A[:1], PARENTS_B[:1], [0.5], [3])[0],
                           make(folders, "image-mixer", batch_size=1).mix(PARENTS_A[:1], PARENTS_B[:1], [0.5], [3])[0])


def test_image_mixer_equals_the_stock_loop_given_imagemixers_conditioning(folders):
    """The stock pipeline's loop, CFG and decode, with its conditioning replaced by ImageMixer's
    written out here: 5 slots [s_a·e_a, s_b·e_b, 0, 0, 0] from the CLIP projected embeddings, zeros
    as the unconditional branch (ImageMixer's demo: `uc = 0 * conds`)."""
    from diffusers import StableDiffusionImageVariationPipeline

    class FiveSlotPipeline(StableDiffusionImageVariationPipeline):
        tokens = None

        def _encode_image(self, image, device, num_images_per_prompt, do_classifier_free_guidance):
            return torch.cat([torch.zeros_like(self.tokens), self.tokens])

    gen = make(folders, "image-mixer", batch_size=1)
    stock = FiveSlotPipeline.from_pretrained(folders["image-mixer"])
    stock.set_progress_bar_config(disable=True)
    a, b, weight, seed = PARENTS_A[1], PARENTS_B[1], 0.7, 22
    with torch.no_grad():
        e_a, e_b = stock.image_encoder(gen.clip_pixels([a, b])).image_embeds
    s_a, s_b = strengths(weight)
    assert (s_a, s_b) == pytest.approx((1.0, 0.3 / 0.7))
    stock.tokens = torch.stack([s_a * e_a, s_b * e_b] + [torch.zeros_like(e_a)] * 3)[None]
    reference = stock(image=gen.clip_pixels([a]), height=SIZE, width=SIZE, num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE, latents=start_noise(gen, seed), output_type="pt").images * 255
    image, _ = gen.mix([a], [b], [weight], [seed])
    assert (image.float() - reference).abs().max() <= 0.5 + 1e-3


def test_unclip_equals_the_stock_pipeline(folders):
    """Weight 1.0 with lerp: the stock StableUnCLIPImg2ImgPipeline given parent A's embedding, the
    same noise_level and a generator seeded with the sample's seed (it draws the embedding noise,
    then the latents, as ours does) gives the same image: normaliser, noising, noise-level
    embedding, empty-prompt text, zeros for the unconditional class labels, v-prediction DDIM."""
    from diffusers import StableUnCLIPImg2ImgPipeline

    gen = make(folders, "unclip", interpolation="lerp", noise_level=250, batch_size=1)
    stock = StableUnCLIPImg2ImgPipeline.from_pretrained(folders["unclip"])
    stock.set_progress_bar_config(disable=True)
    a, b, seed = PARENTS_A[2], PARENTS_B[2], 23
    with torch.no_grad():
        embeds = gen.embed([a])
    reference = stock(image_embeds=embeds, noise_level=250, generator=torch.Generator().manual_seed(seed),
                      height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                      output_type="pt").images * 255
    image, _ = gen.mix([a], [b], [1.0], [seed])
    assert (image.float() - reference).abs().max() <= 0.5 + 1e-3


def test_clip_preprocessing_matches_clip_image_processor(generators, folders):
    """Our tensor preprocessing against the folder's CLIPImageProcessor on the PIL image: same
    geometry; PIL's intermediate uint8 rounding is all that differs."""
    from transformers import CLIPImageProcessor

    gen = generators["image-mixer"]
    processor = CLIPImageProcessor.from_pretrained(folders["image-mixer"] / "feature_extractor")
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    for image in PARENTS_A + PARENTS_B:
        ours = gen.clip_pixels([image])[0]
        theirs = processor(images=Image.fromarray(image.permute(1, 2, 0).numpy()), return_tensors="pt").pixel_values[0]
        levels = ((ours - theirs) * std * 255).abs()
        assert levels.max() <= 3.0 and levels.mean() <= 0.5, (image.shape, levels.max(), levels.mean())


# -- conditioning details ----------------------------------------------------------------------------
def test_slerp_and_lerp():
    a, b = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    zero, one, half = torch.zeros(1, 1), torch.ones(1, 1), torch.full((1, 1), 0.5)
    assert torch.equal(slerp(a, b, zero), a) and torch.equal(slerp(a, b, one), b)
    mid = slerp(a, b, half)
    # halfway along the arc, coefficients sin(π/4)/sin(π/2) on the raw vectors (norms interpolate too)
    assert torch.allclose(mid, (a + b) / np.sqrt(2), atol=1e-6)
    assert torch.allclose(lerp(a, b, half), (a + b) / 2)
    parallel = slerp(a, 3 * a, half)   # no arc: falls back to lerp instead of dividing by sin(0)
    assert torch.allclose(parallel, 2 * a) and torch.isfinite(parallel).all()


def test_sd_image_variations_interpolates_one_token(generators, folders):
    slerp_gen, lerp_gen = generators["sd-image-variations"], make(folders, "sd-image-variations", interpolation="lerp")
    gens = [torch.Generator() for _ in range(2)]
    with torch.no_grad():
        e_a, e_b = slerp_gen.embed([PARENTS_A[0], PARENTS_B[0]])
        ends = slerp_gen.conditioning([PARENTS_A[0]] * 2, [PARENTS_B[0]] * 2, [1.0, 0.0], gens)
        mid_slerp = slerp_gen.conditioning(PARENTS_A[:1], PARENTS_B[:1], [0.5], gens[:1]).context
        mid_lerp = lerp_gen.conditioning(PARENTS_A[:1], PARENTS_B[:1], [0.5], gens[:1]).context
    assert ends.context.shape == (2, 1, e_a.shape[0])
    assert torch.allclose(ends.context[0, 0], e_a, atol=1e-6) and torch.allclose(ends.context[1, 0], e_b, atol=1e-6)
    assert torch.equal(ends.uncond_context, torch.zeros_like(ends.context))
    assert torch.allclose(mid_lerp[0, 0], (e_a + e_b) / 2, atol=1e-6) and not torch.allclose(mid_slerp, mid_lerp)


def test_unclip_conditioning_and_noise_level_bounds(generators, folders):
    gen = generators["unclip"]
    gens = [torch.Generator().manual_seed(s) for s in SEEDS[:2]]
    with torch.no_grad():
        cond = gen.conditioning(PARENTS_A[:2], PARENTS_B[:2], WEIGHTS[:2], gens)
    dim = gen.image_encoder.config.projection_dim   # noised embedding ‖ noise-level embedding
    assert cond.class_labels.shape == (2, 2 * dim) == (2, gen.unet.config.projection_class_embeddings_input_dim)
    assert torch.equal(cond.uncond_class_labels, torch.zeros_like(cond.class_labels))
    assert torch.equal(cond.context, cond.uncond_context) and cond.context.shape[1] == 77   # '' padded to max length
    with pytest.raises(ValueError, match="noise_level"):
        make(folders, "unclip", noise_level=1000)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_pixel_baselines(kind):
    gen = build_generator(GeneratorConfig(kind=kind, size=32), CPU)
    images, failures = gen.mix(PARENTS_A[:2], PARENTS_B[:2], [1.0, 0.5], [1, 2])
    assert images.shape == (2, 3, 32, 32) and failures == [None, None]

"""ldm's DDIM sampler (`generator.scheduler: ldm-ddim` / `ldm-ddim-fork`) against an independent
rewrite, here, of CompVis ldm's formulas (ldm/modules/diffusionmodules/util.py make_ddim_timesteps,
make_ddim_sampling_parameters; ldm/models/diffusion/ddim.py ddim_sampling, p_sample_ddim with eta 0),
on a tiny random-weight UNet: timesteps, the previous alphas, pred_x0 / dir_xt, the CFG combination."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from pipeline.config import GeneratorConfig  # noqa: E402
from pipeline.testing import tiny  # noqa: E402
from pipeline.models.ldm_ddim import LdmDDIM, denoising_timesteps, unet_steps  # noqa: E402
from pipeline.models.build import build_generator  # noqa: E402

from paths import MANIFESTS
SD_SCHEDULE = dict(tiny.sd_ddim_scheduler().config)   # what `tsd convert` writes for ImageMixer


def ldm_alphas_cumprod():
    """ddpm.py register_schedule on make_beta_schedule('linear', 1000, 0.00085, 0.012): float64, then fp32."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas.numpy(), axis=0), dtype=torch.float32)


def ldm_schedule(S, fork):
    """(timesteps in run order, index per step, ddim_alphas, ddim_alphas_prev) as ldm's DDIMSampler has them."""
    alphacums = ldm_alphas_cumprod()
    c = 1000 // S
    ddim_timesteps = np.asarray(list(range(0, 1000, c))) + 1
    alphas = alphacums[ddim_timesteps]
    alphas_prev = np.asarray([alphacums[0]] + alphacums[ddim_timesteps[:-1]].tolist())
    timesteps = ddim_timesteps[:-1] if fork else ddim_timesteps   # the fork's `timesteps[:t_start]`, t_start=-1
    total = timesteps.shape[0]
    run = np.flip(timesteps)
    return [int(t) for t in run], [total - i - 1 for i in range(total)], alphas, alphas_prev


def ldm_sample(unet, x_T, cond, uc, S, scale, fork):
    """ddim_sampling + p_sample_ddim (eta 0, no thresholding), written from ldm's source."""
    run, indices, alphas, alphas_prev = ldm_schedule(S, fork)
    img = x_T
    b = img.shape[0]
    for step, index in zip(run, indices):
        ts = torch.full((b,), step, dtype=torch.long)
        x_in, t_in, c_in = torch.cat([img] * 2), torch.cat([ts] * 2), torch.cat([uc, cond])
        with torch.no_grad():
            e_t_uncond, e_t = unet(x_in, t_in, encoder_hidden_states=c_in).sample.chunk(2)
        e_t = e_t_uncond + scale * (e_t - e_t_uncond)
        a_t = torch.full((b, 1, 1, 1), float(alphas[index]))
        a_prev = torch.full((b, 1, 1, 1), float(alphas_prev[index]))
        sigma_t = torch.zeros((b, 1, 1, 1))
        sqrt_one_minus_at = torch.full((b, 1, 1, 1), float(np.sqrt(1.0 - float(alphas[index]))))
        pred_x0 = (img - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * e_t
        img = a_prev.sqrt() * pred_x0 + dir_xt
    return img


def cub_generator():
    return GeneratorConfig(**{k: v for k, v in yaml.safe_load(open(os.path.join(MANIFESTS, "cub200.yaml")))
                              ["generator"].items() if k != "path"})


def test_the_cub_recipe_runs_ldms_31_uniform_timesteps():
    g = cub_generator()
    assert (g.scheduler, g.steps, g.guidance) == ("ldm-ddim", 30, 3.0)
    sched = LdmDDIM(SD_SCHEDULE, g.steps, g.scheduler)
    run, _, _, _ = ldm_schedule(30, fork=False)
    assert sched.timesteps.tolist() == run == list(range(991, 0, -33))
    assert len(run) == 31 and run[:3] == [991, 958, 925] and run[-3:] == [67, 34, 1]
    assert unet_steps(g.scheduler, g.steps) == 31


def test_the_fork_drops_the_largest_timestep_and_equals_diffusers_leading_only_at_30():
    """ImageMixer's repo runs 30 steps 958 … 1 for S=30: diffusers' DDIM 'leading' + steps_offset 1
    (our `ddim`) gives the same; at S=50 the fork runs 49 steps and diffusers 50."""
    from diffusers import DDIMScheduler

    for S in (30, 50, 60, 10):
        run, _, _, _ = ldm_schedule(S, fork=True)
        ours = LdmDDIM(SD_SCHEDULE, S, "ldm-ddim-fork").timesteps.tolist()
        assert denoising_timesteps("ldm-ddim-fork", S) == run == ours
    diffusers = DDIMScheduler.from_config(SD_SCHEDULE)
    diffusers.set_timesteps(30)
    assert diffusers.timesteps.tolist() == denoising_timesteps("ldm-ddim-fork", 30)
    assert len(denoising_timesteps("ldm-ddim-fork", 50)) == 49 and len(denoising_timesteps("ldm-ddim-fork", 60)) == 62
    with pytest.raises(ValueError, match="steps"):
        GeneratorConfig(kind="mixup", scheduler="ldm-ddim-fork", steps=1).check()


def test_step_counts_ldm_cannot_sample_are_refused():
    """S=3: c=333, the table ends at 1000, past ᾱ's last index (ldm raises IndexError there)."""
    with pytest.raises(ValueError, match="no schedule for steps=3"):
        LdmDDIM(SD_SCHEDULE, 3)
    with pytest.raises(ValueError, match="epsilon"):
        LdmDDIM({**SD_SCHEDULE, "prediction_type": "v_prediction"}, 30)


def test_the_last_step_lands_on_alpha_0_not_1():
    """make_ddim_sampling_parameters: the first table entry's previous alpha is ᾱ_0 = 0.99915, so the
    last step (t=1) returns sqrt(ᾱ_0)·pred_x0 + sqrt(1-ᾱ_0)·ε, not pred_x0."""
    sched = LdmDDIM(SD_SCHEDULE, 30)
    a = ldm_alphas_cumprod().double()
    x, eps = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    out = sched.step(eps, torch.tensor(1), x)
    pred_x0 = (x.double() - (1 - a[1]).sqrt() * eps) / a[1].sqrt()
    expected = a[0].sqrt() * pred_x0 + (1 - a[0]).sqrt() * eps
    assert float(a[0]) == pytest.approx(0.99915, abs=1e-7)
    assert torch.allclose(out.prev_sample.double(), expected, atol=1e-5)
    assert torch.allclose(out.pred_original_sample.double(), pred_x0, atol=1e-5)
    assert not torch.allclose(out.prev_sample, pred_x0.float(), atol=1e-3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny.build_image_mixer(tmp_path_factory.mktemp("ldm-ddim"), tiny.TinySizes())


@pytest.mark.parametrize("scheduler,steps", [("ldm-ddim", 6), ("ldm-ddim-fork", 5)])
def test_denoising_equals_ldms_sampler(folder, scheduler, steps):
    """The generator's loop (both CFG branches in one UNet batch, uncond first) with our scheduler
    against ldm's sampler rewritten above, on the same UNet, context and x_T."""
    cfg = GeneratorConfig(kind="image-mixer", path=str(folder), size=64, steps=steps, guidance=3.0,
                          scheduler=scheduler, batch_size=2)
    gen = build_generator(cfg, torch.device("cpu"))
    generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
    parents = [torch.randint(0, 256, (3, 40, 50), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
               for i in range(4)]
    cond = gen.conditioning(parents[:2], parents[2:], [0.3, 0.6], generators)
    x_T = torch.stack([torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    ours = gen.denoise(cond, [torch.Generator().manual_seed(s) for s in (5, 6)])
    theirs = ldm_sample(gen.unet, x_T, cond.context, cond.uncond_context, steps, 3.0, fork=scheduler.endswith("fork"))
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (ours - theirs).abs().max()
    # and it is not diffusers' DDIM at the same S (1000 % S != 0: another table; at S | 1000 the upstream
    # table equals diffusers' leading + 1, and only the fork differs)
    other = build_generator(GeneratorConfig(**{**cfg.__dict__, "scheduler": "ddim"}), torch.device("cpu"))
    assert not torch.allclose(other.denoise(cond, [torch.Generator().manual_seed(s) for s in (5, 6)]), ours, atol=1e-3)

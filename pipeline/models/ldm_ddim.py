"""CompVis ldm's DDIM sampler (`ldm/models/diffusion/ddim.py`, eta 0) as a scheduler the
generators' denoising loop drives (`timesteps`, `init_noise_sigma`, `scale_model_input`, `step`).

Two variants, both on ldm's 'uniform' discretisation (`make_ddim_timesteps`: c = T // S, the table
is range(0, T, c) + 1, i.e. ceil(T / c) timesteps) and `make_ddim_sampling_parameters` (the alpha
of a step is ᾱ at its timestep, the previous alpha ᾱ at the table's previous entry, ᾱ_0, not 1,
for the first entry):

- `ldm-ddim`: upstream CompVis/stable-diffusion and latent-diffusion run the whole table, from the
  largest timestep down: S=30 gives 31 steps, 991, 958, …, 34, 1. The paper's recipes use this.
- `ldm-ddim-fork`: justinpinkney/stable-diffusion, the repository ImageMixer was trained and demoed
  from, drops the table's largest timestep (`ddim_sampling`: `timesteps = timesteps[:t_start]` with
  t_start=-1, since its commit fc3bf90): S=30 gives 30 steps, 958, …, 1, what ImageMixer's own
  demo ran. For S=30 this equals diffusers' DDIM 'leading' + steps_offset 1 + set_alpha_to_one
  False (our `ddim`), for most other S it does not (S=50: 49 steps, S=60: 62 steps).

The step, with ê the CFG-combined noise prediction (the loop combines the branches):
  pred_x0 = (x - sqrt(1 - a_t)·ê) / sqrt(a_t);  x_prev = sqrt(a_prev)·pred_x0 + sqrt(1 - a_prev)·ê.
ᾱ is ldm's 'linear' schedule (linspace of sqrt(beta) in float64, squared, cumprod), held in float32
as ldm's buffers are; the update runs in float32 whatever the UNet's dtype.

`denoising_timesteps` is plain Python (no torch): `tsd plan --dry-run` counts UNet passes with it.
"""
from __future__ import annotations

from types import SimpleNamespace

LDM_SCHEDULERS = ("ldm-ddim", "ldm-ddim-fork")


def ddim_table(steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """ldm's `make_ddim_timesteps('uniform', steps, T)`, ascending: [1, 1 + c, 1 + 2c, …]."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"generator.steps: must be in 1..{num_train_timesteps} for ldm's DDIM, got {steps}")
    c = num_train_timesteps // steps
    table = [t + 1 for t in range(0, num_train_timesteps, c)]
    if table[-1] >= num_train_timesteps:   # ldm itself fails here (alphacums[T]: IndexError), e.g. S=1, 3
        raise ValueError(f"generator.steps: ldm's DDIM has no schedule for steps={steps} (its table ends at "
                         f"timestep {table[-1]}, past the last of {num_train_timesteps}); pick another step count")
    return table


def denoising_timesteps(scheduler: str, steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """The timesteps an ldm scheduler runs, in the order it runs them (descending)."""
    table = ddim_table(steps, num_train_timesteps)
    if scheduler == "ldm-ddim-fork":
        table = table[:-1]
    elif scheduler != "ldm-ddim":
        raise ValueError(f"not an ldm scheduler: {scheduler!r} (known: {', '.join(LDM_SCHEDULERS)})")
    return table[::-1]


def unet_steps(scheduler: str, steps: int, num_train_timesteps: int = 1000) -> int:
    """UNet evaluations per image (per CFG branch) of a configured sampler: the ldm ones run their
    own table; diffusers' schedulers run `steps`."""
    if scheduler in LDM_SCHEDULERS:
        return len(denoising_timesteps(scheduler, steps, num_train_timesteps))
    return steps


def ldm_betas(num_train_timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012):
    """ldm's 'linear' schedule (`make_beta_schedule`): linspace of sqrt(beta), squared, float64 numpy."""
    import numpy as np

    return np.linspace(linear_start ** 0.5, linear_end ** 0.5, num_train_timesteps, dtype=np.float64) ** 2


def ldm_alphas_cumprod(num_train_timesteps: int, linear_start: float, linear_end: float):
    """ᾱ_t as ldm holds it (`register_schedule`: the float64 cumprod, kept as a float32 buffer)."""
    import numpy as np
    import torch

    return torch.tensor(np.cumprod(1.0 - ldm_betas(num_train_timesteps, linear_start, linear_end)),
                        dtype=torch.float32)


class LdmDDIM:
    """One sampling run (a fresh one per batch, as diffusers' schedulers are used here).

    `timesteps` and the step's coefficients live on the host (the coefficients as Python floats
    holding ldm's float32 values exactly): `step` reads no device tensor, so the denoising loop
    never waits for the device."""

    init_noise_sigma = 1.0   # ldm starts from x_T ~ N(0, I), unscaled

    def __init__(self, scheduler_config: dict, steps: int, variant: str = "ldm-ddim"):
        import torch

        schedule = scheduler_config.get("beta_schedule", "scaled_linear")
        if schedule != "scaled_linear" or scheduler_config.get("trained_betas") is not None:
            raise ValueError(f"generator.scheduler: {variant} needs ldm's 'linear' beta schedule (diffusers' "
                             f"'scaled_linear'); the folder's scheduler config has {schedule!r}")
        prediction = scheduler_config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ValueError(f"generator.scheduler: {variant} samples epsilon-prediction models only "
                             f"(the folder's model predicts {prediction!r})")
        total = int(scheduler_config.get("num_train_timesteps", 1000))
        self.variant = variant
        self.alphas_cumprod = ldm_alphas_cumprod(total, float(scheduler_config.get("beta_start", 0.00085)),
                                                 float(scheduler_config.get("beta_end", 0.012)))
        table = ddim_table(steps, total)
        run = denoising_timesteps(variant, steps, total)
        if not run:
            raise ValueError(f"generator.steps: {variant} runs no step for steps={steps}")
        # previous entry of the table; ᾱ_0 for its first (make_ddim_sampling_parameters)
        prev = {t: (table[i - 1] if i else 0) for i, t in enumerate(table)}
        # per timestep: sqrt(1 - a_t), sqrt(a_t), sqrt(a_prev), sqrt(1 - a_prev), computed in float32 as ldm
        a = self.alphas_cumprod
        self._coefficients = {t: tuple(v.item() for v in ((1.0 - a[t]).sqrt(), a[t].sqrt(), a[prev[t]].sqrt(),
                                                            (1.0 - a[prev[t]]).sqrt())) for t in run}
        self.timesteps = torch.tensor(run, dtype=torch.long)

    def scale_model_input(self, x, t):
        return x

    def step(self, eps, t, x):
        """x_t → x_prev (eta 0) at host timestep t; returns what diffusers' step does
        (prev_sample, pred_original_sample)."""
        noise_t, signal_t, signal_prev, noise_prev = self._coefficients[int(t)]   # the loop passes an int
        e, xf = eps.float(), x.float()
        pred_x0 = (xf - noise_t * e) / signal_t
        prev = signal_prev * pred_x0 + noise_prev * e
        return SimpleNamespace(prev_sample=prev.to(x.dtype), pred_original_sample=pred_x0.to(x.dtype))

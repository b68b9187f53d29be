"""Drop-in replacements for diffusers' ``DDPMScheduler`` and ``DDIMScheduler`` whose ``step`` is
one fused ``pydiffuse.ops.sample_step`` pass:

    from pydiffuse.compat.diffusers import FusedDDIMScheduler
    pipe.scheduler = FusedDDIMScheduler.from_config(pipe.scheduler.config)

and, from ``solvers.py``, for ``EulerDiscreteScheduler``,
``EulerAncestralDiscreteScheduler``, ``DPMSolverMultistepScheduler`` and ``PNDMScheduler``;
``FUSED_SCHEDULERS`` maps each diffusers class name to its drop-in.

The classes subclass diffusers' own, so the config, ``from_config`` / ``save_config`` /
``from_pretrained``, ``set_timesteps``, ``timesteps``, ``add_noise``, ``scale_model_input`` and
``init_noise_sigma`` are diffusers'. ``step`` keeps diffusers' signature and returns the same
``prev_sample`` and ``pred_original_sample`` (up to float32 rounding) for every beta schedule;
prediction_type "epsilon", "sample", "v_prediction"; clip_sample with clip_sample_range;
thresholding (dynamic thresholding, Saharia et al. 2022: a per-sample quantile, then per-sample
coefficients (cx, co) / r and clip 1); any timestep_spacing and steps_offset; set_alpha_to_one,
eta and use_clipped_model_output (DDIM); variance_type "fixed_small", "fixed_small_log",
"fixed_large", "learned_range" (DDPM).

- Coefficients: host float64 from the scheduler's own (float32) ``alphas_cumprod``, computed for
  all of ``timesteps`` at the first step after ``set_timesteps`` and cached by timestep, so a
  step is a dict lookup and the kernel call. No step waits on the device: ``timesteps`` is read
  to the host once after ``set_timesteps``, and a CUDA timestep taken from it is then located
  by its storage offset, not read back.
- diffusers' conventions, kept: DDIM's previous timestep is t - T // K whatever the spacing (with
  "trailing" that is not the next entry of ``timesteps``); DDPM's is the next entry of
  ``timesteps`` (t - 1 before ``set_timesteps``) and it adds noise iff t > 0, at the last step
  too when that t is > 0; DDPM variances are clamped at 1e-20 and learned_range mixes the log of
  that with log beta_t. DDIM with clipping (or thresholding) and not use_clipped_model_output
  moves along the *unclipped* prediction's eps = px x + po o: with eta = 0 the model output
  also fills the op's noise slot (x_prev = m0 x0_clipped + me px x + me po o, one pass); with
  eta > 0 a first pass forms y = me eps + s z and the main pass adds m0 x0_clipped to it.
- Noise, drawn exactly when diffusers draws it (DDIM: eta > 0; DDPM: t > 0): ``variance_noise``
  (DDIM) is used as given; with a ``generator`` (or a list of them) it is drawn as diffusers
  draws it (``randn_tensor``), so the result and the generator's state match diffusers'; with
  neither, it comes from pydiffuse's noise stream N(seed, t + 1, b, j) under ``scheduler.seed``
  (keyword ``seed=0`` of the constructor and ``from_config``; an attribute, not in the config):
  the same on every backend and device, and sample b's noise does not depend on the batch size.
  Runs with one seed repeat their noise; set another ``seed`` for new samples.
- Not supported (NotImplementedError at ``step``): variance_type "learned" (the model's own
  variance, a per-element square root) and "fixed_large_log" (diffusers takes the square root
  of log beta_t < 0 there and returns NaN). float64 data needs
  ``pydiffuse.ops.backend("reference")``.

``schedule_from_diffusers(config)`` gives the ``DiscreteSchedule`` of a diffusers scheduler, to
run a diffusers-trained model with ``pydiffuse.sample``.
"""

import torch

from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput

from ...ops import StepCoefs
from ...predictions import eps_coefs, x0_coefs
from ...schedules import DiscreteSchedule, from_betas
from .solvers import (FusedDPMSolverMultistepScheduler,
                                 FusedEulerAncestralDiscreteScheduler,
                                 FusedEulerDiscreteScheduler, FusedPNDMScheduler)
from ._fused_scheduler import _FusedStep, _Plan, _with_seed

__all__ = ["FUSED_SCHEDULERS", "FusedDDIMScheduler", "FusedDDPMScheduler",
           "FusedDPMSolverMultistepScheduler", "FusedEulerAncestralDiscreteScheduler",
           "FusedEulerDiscreteScheduler", "FusedPNDMScheduler", "schedule_from_diffusers"]

def _previous(scheduler, ts, prev, final):
    """(alpha_bar_t, alpha_bar_prev), host float64, for timesteps ts (a list) and their previous
    ones (a tensor; final below 0)."""
    ab, t = scheduler.alphas_cumprod.detach().to("cpu", torch.float64), torch.tensor(ts)
    return ab[t], torch.where(prev >= 0, ab[prev.clamp(min=0)], final)


class FusedDDIMScheduler(_FusedStep, DDIMScheduler):
    """diffusers' ``DDIMScheduler`` (Song et al. 2021) with a fused ``step``:

    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - s^2) eps + s z,
    s = eta sqrt((1 - ab_prev) / (1 - ab_t)) sqrt(1 - ab_t / ab_prev).

    Args (besides diffusers'):
        seed: the noise stream's seed (int, or one per sample) for steps with eta > 0 that get
            neither ``generator`` nor ``variance_noise``.
    """

    __init__ = _with_seed(DDIMScheduler)

    def _make_plans(self, ts, eta, use_clipped):
        prev = torch.tensor(ts) - self.config.num_train_timesteps // self.num_inference_steps
        ab_t, ab_prev = _previous(self, ts, prev, float(self.final_alpha_cumprod))
        a, sd = ab_t.sqrt(), (1 - ab_t).sqrt()
        cx, co = x0_coefs(self._prediction(), a, sd)
        ex, e0 = eps_coefs(a, sd)
        std = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
        me, m0 = (1 - ab_prev - std * std).sqrt(), ab_prev.sqrt()
        s = std if eta > 0 else torch.zeros_like(std)  # diffusers adds noise only for eta > 0
        unclipped_eps = (self.config.clip_sample or self.config.thresholding) and not use_clipped
        plans = []
        for cx, co, ex, e0, m0, me, s in zip(*(v.tolist() for v in (cx, co, ex, e0, m0, me, s))):
            px, po = ex + e0 * cx, e0 * co  # the unclipped eps = px x + po o
            if unclipped_eps and eta <= 0:  # x_prev = m0 x0 + me px x + me po o, o as "noise"
                plans.append(_Plan(StepCoefs(cx=cx, co=co, m0=m0, mx=me * px, s=me * po), False,
                                   out_as_noise=True))
            elif unclipped_eps:  # y = me (px x + po o) + s z, then x_prev = m0 x0 + y
                plans.append(_Plan(StepCoefs(cx=cx, co=co, m0=m0, s=1.0), True,
                                   first=StepCoefs(cx=px, co=po, m0=me, s=s)))
            else:
                plans.append(_Plan(StepCoefs(cx=cx, co=co, ex=ex, e0=e0, m0=m0, me=me, s=s),
                                   eta > 0))
        return plans

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        """One DDIM step, fused; arguments and result as ``DDIMScheduler.step``.

        Args:
            model_output: [B, C, ...] the model's prediction; sample: x_t [B, C, ...].
            timestep: t (int or a 0-d tensor, e.g. an entry of ``timesteps``).
            eta, use_clipped_model_output, generator, variance_noise: as diffusers (noise
                without generator or variance_noise: the stream under ``self.seed``).

        Returns:
            ``DDIMSchedulerOutput(prev_sample, pred_original_sample)`` or that tuple.
        """
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run "
                             "'set_timesteps' after creating the scheduler")
        if eta > 0 and variance_noise is not None and generator is not None:
            raise ValueError("Cannot pass both generator and variance_noise. Please make sure "
                             "that either `generator` or `variance_noise` stays `None`.")
        t = self._host_timestep(timestep)
        plan = self._plan(t, eta, bool(use_clipped_model_output))
        return self._run(plan, t, model_output, sample, generator, variance_noise,
                         DDIMSchedulerOutput, return_dict)


class FusedDDPMScheduler(_FusedStep, DDPMScheduler):
    """diffusers' ``DDPMScheduler`` (Ho et al. 2020) with a fused ``step``:

    x_prev = sqrt(ab_prev) beta_t / (1 - ab_t) x0 + sqrt(alpha_t) (1 - ab_prev) / (1 - ab_t) x_t
             + std_t z,   alpha_t = ab_t / ab_prev, beta_t = 1 - alpha_t,

    std_t^2 = beta~_t (fixed_small, fixed_small_log), beta_t (fixed_large) or iDDPM's learned
    range; z only at t > 0.

    Args (besides diffusers'):
        seed: the noise stream's seed (int, or one per sample) for steps without ``generator``.
    """

    __init__ = _with_seed(DDPMScheduler)

    def _make_plans(self, ts):
        kind = self.variance_type
        if kind not in ("fixed_small", "fixed_small_log", "fixed_large", "learned_range"):
            raise NotImplementedError(
                f"FusedDDPMScheduler does not support variance_type={kind!r}"
                + (" (diffusers' DDPMScheduler returns NaN with it: sqrt of log beta_t < 0)"
                   if kind == "fixed_large_log" else "")
                + "; use fixed_small, fixed_small_log, fixed_large or learned_range, or "
                "diffusers' DDPMScheduler")
        if self.custom_timesteps or self.num_inference_steps:
            order = self._host_ts
            missing = [u for u in ts if u not in order]
            if missing:
                raise ValueError(f"timestep {missing[0]} is not in scheduler.timesteps")
            prev = torch.tensor([order[i + 1] if i + 1 < len(order) else -1
                                 for i in (order.index(u) for u in ts)])
        else:
            prev = torch.tensor(ts) - 1
        t = torch.tensor(ts)
        ab_t, ab_prev = _previous(self, ts, prev, 1.0)
        alpha, beta = ab_t / ab_prev, 1 - ab_t / ab_prev
        m0 = ab_prev.sqrt() * beta / (1 - ab_t)
        mx = alpha.sqrt() * (1 - ab_prev) / (1 - ab_t)
        var = ((1 - ab_prev) / (1 - ab_t) * beta).clamp(min=1e-20)
        std = {"fixed_large": beta.sqrt(), "learned_range": torch.ones_like(var)}.get(
            kind, var.sqrt())
        std = torch.where(t > 0, std, 0.0)
        cx, co = x0_coefs(self._prediction(), ab_t.sqrt(), (1 - ab_t).sqrt())
        rows = zip(*(v.tolist() for v in (t, cx, co, m0, mx, std, var.log(), beta.log())))
        return [_Plan(StepCoefs(cx=cx, co=co, m0=m0, mx=mx, s=s), u > 0,
                      learned_var=(lo, hi) if kind == "learned_range" else None)
                for u, cx, co, m0, mx, s, lo, hi in rows]

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """One DDPM ancestral step, fused; arguments and result as ``DDPMScheduler.step``.

        Args:
            model_output: [B, C, ...] the model's prediction ([B, 2C, ...] with learned_range);
                sample: x_t [B, C, ...]; timestep: t (int or a 0-d tensor).
            generator: noise as diffusers draws it; None: the stream under ``self.seed``.

        Returns:
            ``DDPMSchedulerOutput(prev_sample, pred_original_sample)`` or that tuple.
        """
        t = self._host_timestep(timestep)
        return self._run(self._plan(t), t, model_output, sample, generator, None,
                         DDPMSchedulerOutput, return_dict)


FUSED_SCHEDULERS = {
    "DDIMScheduler": FusedDDIMScheduler, "DDPMScheduler": FusedDDPMScheduler,
    "EulerDiscreteScheduler": FusedEulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": FusedEulerAncestralDiscreteScheduler,
    "DPMSolverMultistepScheduler": FusedDPMSolverMultistepScheduler,
    "PNDMScheduler": FusedPNDMScheduler}
"""diffusers' scheduler class name -> its fused drop-in (``FUSED_SCHEDULERS[type(s).__name__]
.from_config(s.config)``)."""


def schedule_from_diffusers(config) -> DiscreteSchedule:
    """The ``DiscreteSchedule`` with a diffusers scheduler's betas (its float32 values), so a
    diffusers-trained model runs with ``pydiffuse.sample(model, ..., process=schedule)``.

    Args:
        config: a diffusers scheduler, or its config (dict) with num_train_timesteps,
            beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr.

    Returns:
        DiscreteSchedule of num_train_timesteps steps.
    """
    betas = config.betas if hasattr(config, "betas") else DDPMScheduler.from_config(config).betas
    return from_betas(betas.to(torch.float64))

"""What every fused diffusers scheduler shares (``pydiffuse.compat.diffusers``): the host
timestep, the per-step plans cached after ``set_timesteps``, the noise (``variance_noise``, a
``generator`` drawn as diffusers draws it, or pydiffuse's noise stream) and the fused passes.
Imported through ``pydiffuse.compat.diffusers``, which names the install when diffusers is
missing."""

import dataclasses
import inspect

import torch
from diffusers.utils.torch_utils import randn_tensor

from ...ops import StepCoefs, lincomb, sample_step

PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


@dataclasses.dataclass
class _Plan:
    """One step: ``coefs`` of the main pass; whether diffusers draws noise here; ``first``, a
    pass whose result the main pass takes as its noise, or ``out_as_noise``, the model output in
    the noise slot (both: DDIM's unclipped eps); ``churn``, x^ = x + churn z before the main
    pass, which then runs on x^ without noise (Euler's s_churn); ``history``, the weights of the
    previous steps' x0 (multistep solvers): the first in the main pass's noise slot when it draws
    no noise, the rest by one ``lincomb`` after it."""

    coefs: StepCoefs
    noisy: bool
    first: StepCoefs | None = None
    out_as_noise: bool = False
    learned_var: tuple | None = None
    churn: float = 0.0
    history: tuple = ()


def _with_seed(parent):
    """``parent.__init__`` plus the keyword ``seed``, kept out of the config. The signature shown
    is parent's plus ``seed``: ``from_config`` reads it, so ``from_config(cfg, seed=1)`` works."""

    def __init__(self, *args, seed=0, **kwargs):
        parent.__init__(self, *args, **kwargs)
        self.seed, self._plans, self._seen, self._host_ts = seed, {}, None, []

    sig = inspect.signature(parent.__init__)
    seed = inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, default=0)
    __init__.__signature__ = sig.replace(parameters=[*sig.parameters.values(), seed])
    return __init__


class _FusedStep:
    """What the fused schedulers share: the host timestep, the cached plans, the noise, the run.
    A subclass gives ``_make_plans(keys, *options)``, the plans of every step at once, keyed by
    timestep (``_plan_keys``' default) or by step index."""

    noise_dtype = None    # the dtype diffusers draws its noise in (None: the model output's)

    def _refresh(self):
        """Forget the plans when ``set_timesteps`` ran (or timesteps were replaced)."""
        if self.timesteps is not self._seen:
            self._seen, self._plans = self.timesteps, {}
            self._host_ts = [] if self.timesteps is None else self.timesteps.tolist()

    def _host_timestep(self, timestep) -> int:
        self._refresh()
        if isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu":
            ts = self._seen
            if (timestep.numel() == 1 and ts.stride(0) == 1 and timestep.untyped_storage()
                    .data_ptr() == ts.untyped_storage().data_ptr()):
                return self._host_ts[timestep.storage_offset() - ts.storage_offset()]
        return int(timestep)

    def _plan_keys(self, key) -> list:
        return self._host_ts if key in self._host_ts else [key]

    def _plan(self, key, *options) -> _Plan:
        plan = self._plans.get((key, *options))
        if plan is None:
            keys = self._plan_keys(key)
            plans = self._make_plans(keys, *options)
            self._plans.update({(u, *options): p for u, p in zip(keys, plans)})
            plan = self._plans[(key, *options)]
        return plan

    def _prediction(self, allowed=tuple(PREDICTIONS)) -> str:
        kind = self.config.prediction_type
        if kind not in allowed:
            raise ValueError(f"prediction_type given as {kind} must be one of "
                             f"{', '.join(allowed)} for {type(self).__name__}")
        return PREDICTIONS[kind]

    def _thresholded(self, coefs: StepCoefs, x, out) -> StepCoefs:
        """Dynamic thresholding as diffusers: x0 -> clamp(x0, -r, r) / r, r = the per-sample
        quantile of |x0| clamped to [1, sample_max_value]; here (cx, co) / r with clip 1."""
        x0 = lincomb([x, out if out.shape == x.shape else out[:, :x.shape[1]]],
                     [coefs.cx, coefs.co])
        r = torch.quantile(x0.reshape(len(x0), -1).abs().float(),
                           self.config.dynamic_thresholding_ratio, dim=1)
        r = r.clamp(min=1, max=self.config.sample_max_value)
        return dataclasses.replace(coefs, cx=coefs.cx / r, co=coefs.co / r)

    def _fused(self, plan: _Plan, step: int, model_output, sample, generator, variance_noise,
               history=()):
        """The plan's passes: (prev_sample, x0). Noise, when ``plan.noisy``: ``variance_noise``,
        else a ``generator``'s draw (diffusers' ``randn_tensor``), else the noise stream at
        ``step`` under ``self.seed``; ``history``: the x0 of the previous steps."""
        x, out = sample, model_output
        if out.dtype != x.dtype:  # diffusers' arithmetic promotes
            dtype = torch.promote_types(x.dtype, out.dtype)
            x, out = x.to(dtype), out.to(dtype)
        noise = {}
        if plan.noisy and variance_noise is not None:
            noise = {"noise": variance_noise.to(x.dtype)}
        elif plan.noisy and generator is not None:
            z = randn_tensor(sample.shape, generator=generator, device=model_output.device,
                             dtype=self.noise_dtype or model_output.dtype)
            noise = {"noise": z.to(x.dtype)}
        elif plan.noisy:
            noise = {"seed": self.seed, "step": step}
        if plan.churn:  # out = x is a placeholder: co = 0
            x, noise = sample_step(x, x, StepCoefs(mx=1.0, s=plan.churn), **noise), {}
        coefs, clip = plan.coefs, None
        if self.config.get("thresholding"):
            coefs, clip = self._thresholded(coefs, x, out), 1.0
        elif self.config.get("clip_sample"):
            clip = self.config.clip_sample_range
        if plan.first is not None:
            noise = {"noise": sample_step(x, out, plan.first, **noise)}
        elif plan.out_as_noise:
            noise = {"noise": out}
        hist = list(zip(plan.history, history))
        if hist and not noise:  # the free noise slot takes the first history term: one pass
            (w, d), hist = hist[0], hist[1:]
            coefs, noise = dataclasses.replace(coefs, s=w), {"noise": d}
        prev, x0 = sample_step(x, out, coefs, clip=clip, learned_var=plan.learned_var,
                               return_x0=True, **noise)
        if hist:
            prev = lincomb([prev, *(d for _, d in hist)], [1.0, *(w for w, _ in hist)])
        return prev, x0

    def _run(self, plan: _Plan, t: int, model_output, sample, generator, variance_noise,
             output, return_dict):
        """``_fused`` at timestep t (the stream's step t + 1), as diffusers' output."""
        prev, x0 = self._fused(plan, t + 1, model_output, sample, generator, variance_noise)
        if not return_dict:
            return prev, x0
        return output(prev_sample=prev, pred_original_sample=x0)

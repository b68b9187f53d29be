"""``pydiffuse.sample``: every sampler behind one call."""

import numbers
import time

import torch

from ..ops import randn
from ..ops._packing import pack_seeds
from ..predictions import check_prediction
from ..schedules import as_process
from ..sde import VPSDE
from ..nn.denoiser import Denoiser
from ._common import check_x
from .cuda_graph import captured_run
from .registry import SAMPLERS


def _model_device(model):
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return torch.device("cpu")


def _fingerprint(value):
    """A hashable stand-in for sampler settings (tensors by content)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype),
                hash(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()))
    if isinstance(value, dict):
        return tuple(sorted((k, _fingerprint(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(v) for v in value)
    return repr(value)


def _initial(shape, x_T, process, seed, device, dtype):
    """x_T as given, or prior_std * the noise stream at step 0."""
    if x_T is not None:
        return check_x(x_T)
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"shape must be a tuple of positive ints (B, ...), got {shape!r}")
    return randn(list(shape), seed, 0, device=device, dtype=dtype) * process.prior_std


def sample(model, shape=None, *, process, sampler: str = "ddim", steps=None,
           prediction: str = "eps", seed=0, x_T=None, guidance=None, model_kwargs=None,
           uncond_kwargs=None, classifier=None, classifier_scale: float = 1.0, labels=None,
           device=None, dtype=torch.float32, progress=None, callback=None,
           cuda_graph: bool = False, return_info: bool = False, **options):
    """Draw samples with any sampler: ``pydiffuse.sample(model, (B, C, H, W), process=sched)``.

    Args:
        model: ``model(x, t)`` with t a [B] tensor of the process's time (step index for a
            DiscreteSchedule, t in [0, 1] for an SDE, sigma for a noise ladder); a diffusers
            ``UNet2DModel`` works as is (its ``.sample``).
        shape: (B, ...) of the samples; or ``x_T`` (a tensor) instead.
        process: DiscreteSchedule, SDE, or sigmas / NoiseLadder. A linear DiscreteSchedule with
            an SDE sampler ("pc", "ode") is its chain's ``VPSDE.from_discrete`` (a
            ``DiscreteVPSDE``: the model keeps its step index and the chain's std, as score_sde
            samples DDPM checkpoints).
        sampler: a name of ``pydiffuse.samplers.SAMPLERS`` ("ddpm", "ddim", "ald", "pc", "ode",
            "euler", "heun", "dpmpp_2m", ...); its options as keywords (eta, clip, variance,
            predictor, corrector, snr, method, rtol, atol, churn, ...: the entry's ``options``).
        steps: model-call steps (the sampler's default when None).
        prediction: what the model predicts: "eps", "x0", "v" or "score".
        seed: int or one int per sample: x_T and all the sampler's noise come from the
            ``pydiffuse.ops`` noise stream, so a sample does not depend on its batch or device.
        guidance, model_kwargs, uncond_kwargs: classifier-free guidance o = o_u + guidance
            (o_c - o_u) (guidance = 1 + w), o_c from model(x, t, **model_kwargs), o_u with
            uncond_kwargs overriding them.
        classifier, classifier_scale, labels: classifier guidance with
            classifier(x, t) -> logits.
        progress: a tqdm bar (None: when on a terminal).
        cuda_graph: run a fixed-step sampler as one captured CUDA graph (CUDA tensors only; the
            graph is cached and replayed for the next call with the same arguments; ``nfe``
            counts the warm-up and capture on the first call and 0 on replays).
        return_info: also return {"nfe": model evaluations, "seconds": wall time}.

    Returns:
        samples [B, ...] (and the info dict).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if isinstance(shape, torch.Tensor) and x_T is None:      # x_T given in shape's place
        shape, x_T = None, shape
    if (shape is None) == (x_T is None):
        raise ValueError("give a shape (B, ...) or x_T=, exactly one")
    process = as_process(process)
    if process.kind == "discrete" and "discrete" not in SAMPLERS[sampler].processes \
            and "sde" in SAMPLERS[sampler].processes:
        process = VPSDE.from_discrete(process)
    check_prediction(prediction)
    if isinstance(model, Denoiser):
        if any(v is not None for v in (guidance, model_kwargs, uncond_kwargs, classifier)):
            raise ValueError("model is a Denoiser: set guidance and model keywords on it")
        den = model
    else:
        den = Denoiser(model, model_kwargs=model_kwargs, guidance=guidance,
                       uncond_kwargs=uncond_kwargs, classifier=classifier,
                       classifier_scale=classifier_scale, labels=labels)
    device = torch.device(device) if device is not None else (
        x_T.device if x_T is not None else _model_device(den.model))
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, ()))
    x = _initial(shape, x_T, process, seed, device, dtype)
    seeds = pack_seeds(seed, len(x), x.device).clone()  # a graph's replays write to this one
    seeds = seeds.reshape(()) if seeds.numel() == 1 else seeds     # one seed for the batch
    kwargs = dict(options, prediction=prediction, seed=seeds, callback=callback,
                  progress=progress)
    if steps is not None:
        kwargs["steps"] = steps
    entry = SAMPLERS[sampler]
    fn = entry.fn
    start, nfe0 = time.perf_counter(), den.nfe
    if cuda_graph:
        if callback is not None:
            raise ValueError("cuda_graph=True runs the loop as one graph: no callback")
        if entry.is_adaptive(options):
            adaptive = "" if entry.adaptive is True else " with " + ", ".join(
                f"{k}={v!r}" for k, v in entry.adaptive.items())
            raise ValueError(f"cuda_graph=True needs a fixed-step sampler; {sampler}{adaptive} "
                             "decides its steps on the host")
        settings = dict(kwargs, seed=None, guidance=den.guidance, model_kwargs=den.model_kwargs,
                        uncond_kwargs=den.uncond_kwargs, classifier=id(den.classifier),
                        classifier_scale=den.classifier_scale, labels=den.labels)
        key = (id(den.model), sampler, tuple(x.shape), x.dtype, x.device, id(process),
               tuple(seeds.shape), _fingerprint(settings))
        out = captured_run(key, lambda x_in: fn(den, x_in, process, **kwargs), x, seeds)
    else:
        out = fn(den, x, process, **kwargs)
    if return_info:
        return out, {"nfe": den.nfe - nfe0, "seconds": time.perf_counter() - start}
    return out

"""A short DDIM loop (Song et al. 2021, "Denoising Diffusion Implicit Models") on the fused
``sample_step``, timed beside the same loop in eager torch: ``pydiffuse demo`` and
``benchmarks/bench_sampling.py``.

The model is a stand-in (``eps = 0.1 x``), so the numbers measure the sampler's own cost, not a
network's. The linear beta schedule of DDPM (1e-4 .. 0.02, T = 1000) is computed in float64 and
each step's coefficients become Python floats (packed as float32 by the op).
"""

import argparse
import math
import statistics
import sys
import time

import torch

from pydiffuse import ops

DEMO_SHAPE = (8, 4, 128, 128)


def _model(x, t):
    return 0.1 * x


def ddim_coefficients(steps: int, eta: float = 0.0, num_timesteps: int = 1000):
    """[(t, StepCoefs)] of a DDIM run with ``steps`` uniformly spaced steps, eps prediction:

    x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t);  eps = (x - sqrt(a_t) x0) / sqrt(1 - a_t)
    next = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev).
    """
    betas = torch.linspace(1e-4, 0.02, num_timesteps, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0).tolist()
    timesteps = list(range(0, num_timesteps, num_timesteps // steps))[::-1]
    plan = []
    for i, t in enumerate(timesteps):
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        plan.append((t, ops.StepCoefs(
            cx=1 / math.sqrt(a_t), co=-math.sqrt(1 - a_t) / math.sqrt(a_t),
            ex=1 / math.sqrt(1 - a_t), e0=-math.sqrt(a_t) / math.sqrt(1 - a_t),
            m0=math.sqrt(a_prev), me=math.sqrt(max(1 - a_prev - sigma**2, 0.0)), s=sigma)))
    return plan


def ddim_fused(x, plan, model=_model, *, clip=1.0, seed=0):
    """The DDIM loop, one fused ``sample_step`` per step (noise from the stream when eta > 0)."""
    t_batch = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for i, (t, c) in enumerate(plan):
        eps = model(x, t_batch.fill_(t))
        x = ops.sample_step(x, eps, c, clip=clip, seed=seed if c.s else None, step=i)
    return x


def ddim_eager(x, plan, model=_model, *, clip=1.0, seed=0):
    """The same loop written in eager torch (noise from ``torch.randn`` when eta > 0)."""
    t_batch = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    for t, c in plan:
        eps = model(x, t_batch.fill_(t))
        x0 = (c.cx * x + c.co * eps).clamp(-clip, clip)
        eps = c.ex * x + c.e0 * x0
        x = c.m0 * x0 + c.me * eps
        if c.s:
            x = x + c.s * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return x


def _time_loop(fn, repeats: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ddim_loop_demo(steps: int = 50, shape=DEMO_SHAPE, *, device=None, dtype=torch.float32,
                   eta: float = 0.0, repeats: int = 3, seed: int = 0, log=print) -> dict:
    """Runs and times the DDIM loop fused and eager; prints and returns the result.

    Returns:
        dict with steps, shape, device, dtype, fused/eager steps per second, speedup and, for
        eta = 0 (no noise), the relative difference of the two final samples.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    plan = ddim_coefficients(steps, eta)
    gen = torch.Generator(device=device).manual_seed(seed)
    x_T = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    backend = ops.current_backend(device)
    log(f"DDIM, {steps} steps, eta={eta}, x0 clipped to [-1, 1], stand-in model eps = 0.1 x, "
        f"x_T {'x'.join(map(str, shape))} {str(dtype).removeprefix('torch.')} on {device} "
        f"(pydiffuse backend: {backend})")
    # One untimed run each (warm-up), then the median of `repeats` timed runs.
    fused_out = ddim_fused(x_T, plan, seed=seed)
    eager_out = ddim_eager(x_T, plan, seed=seed)
    fused_s = _time_loop(lambda: ddim_fused(x_T, plan, seed=seed), repeats, device)
    eager_s = _time_loop(lambda: ddim_eager(x_T, plan, seed=seed), repeats, device)
    result = {"steps": steps, "shape": list(shape), "device": str(device),
              "dtype": str(dtype).removeprefix("torch."), "backend": backend, "eta": eta,
              "fused_steps_per_s": steps / fused_s, "eager_steps_per_s": steps / eager_s,
              "speedup": eager_s / fused_s, "rel_diff": None}
    if eta == 0:
        a, b = fused_out.double(), eager_out.double()
        result["rel_diff"] = ((a - b).norm() / b.norm()).item()
    log(f"  fused (pydiffuse.ops.sample_step): {result['fused_steps_per_s']:8.1f} steps/s")
    log(f"  eager torch:                       {result['eager_steps_per_s']:8.1f} steps/s")
    log(f"  speedup {result['speedup']:.2f}x"
        + ("" if result["rel_diff"] is None
           else f"; fused vs eager final sample: relative difference {result['rel_diff']:.1e}"))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--shape", default=",".join(map(str, DEMO_SHAPE)))
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--eta", type=float, default=0.0, help="0: DDIM; 1: DDPM-like noise")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    ddim_loop_demo(args.steps, [int(d) for d in args.shape.split(",")], device=args.device,
                   dtype=getattr(torch, args.dtype), eta=args.eta, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())

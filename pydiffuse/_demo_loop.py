"""A short DDIM loop (Song et al. 2021, "Denoising Diffusion Implicit Models"):
``pydiffuse.samplers.sample_ddim`` (one fused ``sample_step`` per step) timed beside the same
loop in eager torch, and on CUDA the same loop as one captured graph: the DDIM step of
``benchmarks/gpu_check.sh`` (``python -m pydiffuse._demo_loop``).

The model is a stand-in (``eps = 0.1 x``), so the numbers measure the sampler's own cost, not a
network's; the schedule is DDPM's linear one (T = 1000), the coefficients ``ddim_table``'s.
"""

import argparse
import statistics
import sys
import time

import torch

from pydiffuse import ops, sample, schedules
from pydiffuse.samplers.ddim import ddim_schedule, ddim_table, sample_ddim

DEMO_SHAPE = (8, 4, 128, 128)


def _model(x, t):
    return 0.1 * x


def ddim_fused(x, steps, eta=0.0, model=_model, *, clip=1.0, seed=0):
    """The DDIM loop of ``pydiffuse.samplers.sample_ddim`` (noise from the stream when eta > 0)."""
    return sample_ddim(model, x, schedules.linear(1000), steps=steps, eta=eta, clip=clip,
                       seed=seed)


def ddim_eager(x, steps, eta=0.0, model=_model, *, clip=1.0, seed=0):
    """The same loop written in eager torch (noise from ``torch.randn`` when eta > 0)."""
    sched = ddim_schedule(schedules.linear(1000), steps)
    cols = {k: v.tolist() for k, v in ddim_table(sched, "eps", eta).items()}
    gen = torch.Generator(device=x.device).manual_seed(seed)
    for i in reversed(range(len(sched))):
        t = torch.full((x.shape[0],), int(sched.timesteps[i]), device=x.device)
        eps = model(x, t)
        x0 = (cols["cx"][i] * x + cols["co"][i] * eps).clamp(-clip, clip)
        eps = cols["ex"][i] * x + cols["e0"][i] * x0
        x = cols["m0"][i] * x0 + cols["me"][i] * eps
        if cols["s"][i]:
            x = x + cols["s"][i] * torch.randn(x.shape, generator=gen, device=x.device,
                                               dtype=x.dtype)
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
    gen = torch.Generator(device=device).manual_seed(seed)
    x_T = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    backend = ops.current_backend(device)
    log(f"DDIM, {steps} steps, eta={eta}, x0 clipped to [-1, 1], stand-in model eps = 0.1 x, "
        f"x_T {'x'.join(map(str, shape))} {str(dtype).removeprefix('torch.')} on {device} "
        f"(pydiffuse backend: {backend})")
    # One untimed run each (warm-up), then the median of `repeats` timed runs.
    fused_out = ddim_fused(x_T, steps, eta, seed=seed)
    eager_out = ddim_eager(x_T, steps, eta, seed=seed)
    fused_s = _time_loop(lambda: ddim_fused(x_T, steps, eta, seed=seed), repeats, device)
    eager_s = _time_loop(lambda: ddim_eager(x_T, steps, eta, seed=seed), repeats, device)
    result = {"steps": steps, "shape": list(shape), "device": str(device),
              "dtype": str(dtype).removeprefix("torch."), "backend": backend, "eta": eta,
              "fused_steps_per_s": steps / fused_s, "eager_steps_per_s": steps / eager_s,
              "speedup": eager_s / fused_s, "rel_diff": None}
    if eta == 0:
        a, b = fused_out.double(), eager_out.double()
        result["rel_diff"] = ((a - b).norm() / b.norm()).item()
    log(f"  fused (pydiffuse.ops.sample_step): {result['fused_steps_per_s']:8.1f} steps/s")
    log(f"  eager torch:                       {result['eager_steps_per_s']:8.1f} steps/s")
    if device.type == "cuda":        # the whole loop as one captured CUDA graph, replayed
        def graph_run():
            return sample(_model, x_T=x_T, process=schedules.linear(1000), sampler="ddim",
                          steps=steps, eta=eta, clip=1.0, seed=seed, cuda_graph=True)
        graph_out = graph_run()
        graph_s = _time_loop(graph_run, repeats, device)
        result["graph_steps_per_s"] = steps / graph_s
        result["graph_vs_fused_max_diff"] = (graph_out - fused_out).abs().max().item()
        log(f"  fused, one CUDA graph:             {result['graph_steps_per_s']:8.1f} steps/s "
            f"(max difference from the eager-launched loop "
            f"{result['graph_vs_fused_max_diff']:.1e})")
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

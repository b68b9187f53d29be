#!/usr/bin/env python3
"""Sampling cost: pydiffuse's fused sampler steps beside diffusers' schedulers, PyTorch eager and
torch.compile. Benchmarks print; they never assert.

(a) Per-step sampler overhead, everything but the model call (the model output is one fixed
    tensor), on [64, 3, 64, 64] float32 at step 25 of 50: diffusers' ``DDIMScheduler.step``
    (stock config: linear betas, epsilon, clip_sample) and ``DDPMScheduler.step`` (fixed_small,
    with its noise); pydiffuse's ``FusedDDIMScheduler`` / ``FusedDDPMScheduler.step`` from the
    same config; the native pydiffuse step (``sample_step`` with the samplers' precomputed
    coefficient table); the same formula in PyTorch eager and ``torch.compile`` of it. Columns:
    ms per step, diffusers' time / this row's, and for the pydiffuse rows the bytes they move
    (each pass's reads and writes) as % of this machine's copy bandwidth (``dst.copy_(src)`` at
    the same size, measured in this run by ``pydiffuse.bench``).
(b) End-to-end DDIM-50 (eta 0, clip_sample off) of a small diffusers ``UNet2DModel`` on
    [8, 3, 32, 32]: ``pydiffuse.sample`` vs the DDIMPipeline loop with diffusers'
    ``DDIMScheduler`` and with ``FusedDDIMScheduler``; seconds, images/s, the sampler's own ms
    per step (total less the UNet calls alone), and each result's difference from diffusers'.

Medians of repeated runs after a warm-up (``pydiffuse.bench.time_call``); rows timed while other
processes used over 10% of the CPUs are starred. glibc's malloc is told to keep freed memory
(``keep_freed_memory``; ``--malloc-default`` to leave it), and ``--threads 1`` steadies the
timings where other processes share the CPU.

    python benchmarks/bench_sampling.py [--quick] [--device cpu|cuda] [--no-compile] [--threads N]
                                        [--malloc-default] [--json PATH]
"""

import argparse
import ctypes
import sys
import time

import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, PNDMScheduler,
                       UNet2DModel)

import pydiffuse
from pydiffuse import bench, ops
from pydiffuse.compat.diffusers import (FusedDDIMScheduler, FusedDDPMScheduler,
                                        FusedDPMSolverMultistepScheduler,
                                        FusedEulerAncestralDiscreteScheduler,
                                        FusedEulerDiscreteScheduler, FusedPNDMScheduler,
                                        schedule_from_diffusers)
from pydiffuse.samplers._common import StepTable
from pydiffuse.samplers.ddim import ddim_schedule, ddim_table
from pydiffuse.samplers.ddpm import ddpm_table

STEP_SHAPE = (64, 3, 64, 64)
SOLVER_SHAPE = (64, 4, 64, 64)  # Stable Diffusion's latents
E2E_SHAPE = (8, 3, 32, 32)
STEPS = 50
E2E_BUDGET = {False: bench.Budget(0.0, 1, 0.0, 5, 5), True: bench.Budget(0.0, 1, 0.0, 2, 2)}


def _coefs(row: dict, names) -> ops.StepCoefs:
    return ops.StepCoefs(**{n: row[n] for n in names})


def _schedulers(stock_cls, fused_cls):
    """diffusers' scheduler in its stock config, the fused one from that config, both set to
    STEPS steps; the step measured (k) and its timestep."""
    stock = stock_cls()
    fused = fused_cls.from_config(stock.config)
    for s in (stock, fused):
        s.set_timesteps(STEPS)
    k = STEPS // 2
    return stock, fused, k, stock.timesteps[k]


def ddim_methods(x, out) -> list:
    """(name, call, tensors moved or None) of one DDIM step, eta = 0, clip_sample=True."""
    stock, fused, k, t = _schedulers(DDIMScheduler, FusedDDIMScheduler)
    sched = ddim_schedule(schedule_from_diffusers(stock), STEPS, "leading")
    native = _coefs(StepTable(ddim_table(sched, "eps", 0.0), x.device).row(len(sched) - 1 - k),
                    ("cx", "co", "ex", "e0", "m0", "me"))
    ab = stock.alphas_cumprod.double()
    a_t, a_prev = float(ab[int(t)]), float(ab[int(t) - 1000 // STEPS])

    def eager(x, out):  # diffusers' formula, coefficients precomputed
        x0 = ((x - (1 - a_t) ** 0.5 * out) / a_t ** 0.5).clamp(-1, 1)
        return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * out, x0

    return [
        ("diffusers DDIMScheduler.step", lambda: stock.step(out, t, x), None),
        ("FusedDDIMScheduler.step", lambda: fused.step(out, t, x), 4),
        ("native sample_step, precomputed table (no x0 out)",
         lambda: ops.sample_step(x, out, native, clip=1.0), 3),
        ("eager torch, the same formula", lambda: eager(x, out), None),
        ("torch.compile(eager)", eager, "compile"),
    ]


def ddpm_methods(x, out) -> list:
    """The same for one DDPM step: fixed_small variance with its noise, clip_sample=True."""
    stock, fused, k, t = _schedulers(DDPMScheduler, FusedDDPMScheduler)
    process = schedule_from_diffusers(stock).respace(STEPS)
    native = _coefs(StepTable(ddpm_table(process, "eps", "fixed_small"), x.device)
                    .row(len(process) - 1 - k), ("cx", "co", "m0", "mx", "s"))
    ab = stock.alphas_cumprod.double()
    a_t, a_prev = float(ab[int(t)]), float(ab[int(stock.timesteps[k + 1])])
    beta = 1 - a_t / a_prev
    c0, ct = a_prev ** 0.5 * beta / (1 - a_t), (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a_t)
    std = ((1 - a_prev) / (1 - a_t) * beta) ** 0.5
    gen = torch.Generator(x.device).manual_seed(0)

    def eager(x, out, noise=None):
        x0 = ((x - (1 - a_t) ** 0.5 * out) / a_t ** 0.5).clamp(-1, 1)
        z = torch.randn(x.shape, generator=gen, device=x.device) if noise is None else noise(x)
        return c0 * x0 + ct * x + std * z, x0

    return [
        ("diffusers DDPMScheduler.step (generator)", lambda: stock.step(out, t, x, gen), None),
        ("FusedDDPMScheduler.step (generator: torch.randn)", lambda: fused.step(out, t, x, gen),
         6),
        ("FusedDDPMScheduler.step (no generator: stream)", lambda: fused.step(out, t, x), 4),
        ("native sample_step, seed (no x0 out)",
         lambda: ops.sample_step(x, out, native, clip=1.0, seed=0, step=1), 3),
        ("eager torch, the same formula (torch.randn)", lambda: eager(x, out), None),
        ("torch.compile(eager) (randn_like)", lambda x, out: eager(x, out, torch.randn_like),
         "compile"),
    ]


SOLVERS = [  # case, diffusers' class, the fused one, config, generator?, tensors the fused moves
    ("Euler", EulerDiscreteScheduler, FusedEulerDiscreteScheduler, {}, False, 4),
    ("Euler ancestral (generator)", EulerAncestralDiscreteScheduler,
     FusedEulerAncestralDiscreteScheduler, {}, True, 6),
    ("Euler ancestral (no generator: stream)", EulerAncestralDiscreteScheduler,
     FusedEulerAncestralDiscreteScheduler, {}, False, 4),
    ("DPM-Solver++ 2M", DPMSolverMultistepScheduler, FusedDPMSolverMultistepScheduler, {}, False,
     5),
    ("DPM-Solver++ 2M Karras", DPMSolverMultistepScheduler, FusedDPMSolverMultistepScheduler,
     {"use_karras_sigmas": True}, False, 5),
    ("SDE-DPM-Solver++ 2M (generator)", DPMSolverMultistepScheduler,
     FusedDPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}, True, 9),
    ("SDE-DPM-Solver++ 2M (no generator: stream)", DPMSolverMultistepScheduler,
     FusedDPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}, False, 7),
    ("PNDM (PLMS)", PNDMScheduler, FusedPNDMScheduler, {"skip_prk_steps": True}, False, 6),
]


def solver_methods(x, out) -> list:
    """(case, [(name, call, tensors moved or None)]) of one mid-run step of each new fused
    scheduler and diffusers' own (the stock config but for the case's keys): both run to step
    STEPS // 2 first, so the multistep histories are full; each timed call resets the step
    counter (``_step_index``), so every call is that step. Without a generator diffusers draws
    from torch's global generator, the fused scheduler from the noise stream. The Euler
    schedulers are told ``scale_model_input`` ran (as a pipeline calls it before each step), so
    diffusers' step does not log its warning on every call, which would inflate its time."""
    cases = []
    for case, stock_cls, fused_cls, config, with_generator, moved in SOLVERS:
        pair = []
        for cls in (stock_cls, fused_cls):
            sched = cls(**config)
            sched.set_timesteps(STEPS)
            if hasattr(sched, "is_scale_input_called"):
                sched.is_scale_input_called = True
            gen = torch.Generator(x.device).manual_seed(0)
            step_kw = {"generator": gen} if with_generator else {}
            for t in sched.timesteps[:STEPS // 2]:
                sched.step(out, t, x, **step_kw)
            t, k = sched.timesteps[STEPS // 2], getattr(sched, "_step_index", None)

            def call(sched=sched, t=t, k=k, step_kw=step_kw):
                if k is not None:
                    sched._step_index = k
                return sched.step(out, t, x, **step_kw)

            pair.append(call)
        cases.append((case, [(f"diffusers {stock_cls.__name__}.step", pair[0], None),
                             (f"{fused_cls.__name__}.step", pair[1], moved)]))
    return cases


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed buffers up to 32 MiB (no mmap / munmap per tensor), as a
    caching allocator does: CPU timings then measure the step, not the first-touch page faults
    of fresh buffers, which otherwise come and go with malloc's adaptive threshold (a 5x swing
    of diffusers' step here). False where that is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 25) and libc.mallopt(-1, 1 << 30))  # MMAP, TRIM
    except (OSError, AttributeError):
        return False


def _timed(fn, device, budget) -> dict:
    load = bench.OtherLoad()
    times = bench.time_call(fn, (), device, budget, load)
    return {**bench._summary(times), "other_cpu_load": load.value}


def step_rows(device, budget, copy_gbps: float, use_compile: bool, shape=STEP_SHAPE,
              cases=None) -> list[dict]:
    """Rows of ``cases(x, out)`` -> [(case, methods)] on [shape] inputs (default: DDIM, DDPM)."""
    x, out = bench._inputs(2, shape, torch.float32, device)
    tensor_bytes = x.numel() * x.element_size()
    rows = []
    cases = cases or (lambda x, out: [("DDIM eta=0", ddim_methods(x, out)),
                                      ("DDPM fixed_small", ddpm_methods(x, out))])
    for case, methods in cases(x, out):
        base = None
        for name, fn, moved in methods:
            row = {"case": case, "method": name, "error": None}
            try:
                if moved == "compile":
                    moved = None
                    if not use_compile:
                        raise RuntimeError("skipped (--no-compile)")
                    start, compiled = time.perf_counter(), torch.compile(fn)
                    compiled(x, out)
                    row["compile_s"] = time.perf_counter() - start
                    fn = (lambda c: lambda: c(x, out))(compiled)
                row.update(_timed(fn, device, budget))
            except Exception as err:  # noqa: BLE001 - a benchmark reports, it does not crash
                row["error"] = bench._short(err)
                rows.append(row)
                continue
            base = base or row["median_ms"]
            row["x_diffusers"] = base / row["median_ms"]
            if moved:
                gbps = moved * tensor_bytes / 1e9 / (row["median_ms"] / 1e3)
                row.update(tensors_moved=moved, gbps=gbps, pct_copy_bw=100 * gbps / copy_gbps)
            rows.append(row)
    return rows


def tiny_unet(device):
    torch.manual_seed(0)
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                       layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).to(device).eval()


def e2e_rows(device, budget) -> list[dict]:
    unet, config = tiny_unet(device), DDIMScheduler(clip_sample=False).config
    x_T = torch.randn(E2E_SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    process = schedule_from_diffusers(config)
    timesteps = DDIMScheduler.from_config(config)
    timesteps.set_timesteps(STEPS)

    def pipeline_loop(cls):
        scheduler = cls.from_config(config)

        def run():
            scheduler.set_timesteps(STEPS)
            x = x_T
            for t in scheduler.timesteps:
                x = scheduler.step(unet(x, t).sample, t, x).prev_sample
            return x
        return run

    methods = [
        ("UNet calls alone (50, no sampler)",
         lambda: [unet(x_T, t).sample for t in timesteps.timesteps][-1]),
        ("diffusers loop, DDIMScheduler", pipeline_loop(DDIMScheduler)),
        ("diffusers loop, FusedDDIMScheduler", pipeline_loop(FusedDDIMScheduler)),
        ("pydiffuse.sample(sampler='ddim')",
         lambda: pydiffuse.sample(unet, x_T=x_T, process=process, sampler="ddim", steps=STEPS,
                                  progress=False)),
    ]
    rows, results = [], {}
    with torch.no_grad():
        for name, fn in methods:
            results[name] = fn()
            row = {"method": name, **_timed(fn, device, budget)}
            row["images_per_s"] = E2E_SHAPE[0] / (row["median_ms"] / 1e3)
            rows.append(row)
    model_ms, reference = rows[0]["median_ms"], results[methods[1][0]]
    for row in rows[1:]:
        row["sampler_ms_per_step"] = (row["median_ms"] - model_ms) / STEPS
        mine = results[row["method"]].double()
        row["rel_diff_vs_diffusers"] = ((mine - reference.double()).norm()
                                        / reference.double().norm()).item()
    return rows


def _format(header, body) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w)  # noqa: E731
                               for i, (v, w) in enumerate(zip(r, widths))).rstrip()
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in body]


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _star(row) -> str:
    load = row.get("other_cpu_load")
    return " *" if load is not None and load > bench.LOAD_WARNING else ""


def _step_table(rows) -> list:
    body = []
    for r in rows:
        if r["error"]:
            body.append([r["case"], r["method"], "n/a", "-", "-", r["error"][:60]])
            continue
        note = f"compile {r['compile_s']:.0f} s" if "compile_s" in r else ""
        body.append([r["case"], r["method"], _cell(r["median_ms"], ".3f") + _star(r),
                     _cell(r["x_diffusers"], ".1f"), _cell(r.get("pct_copy_bw"), ".0f"), note])
    return _format(["case", "method", "ms/step", "x diffusers", "% copy BW", ""], body)


def format_report(report: dict) -> str:
    m, c = report["machine"], report["copy"]
    where = m["gpu"] if report["device"].startswith("cuda") else (
        f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads")
    lines = [f"pydiffuse {m['pydiffuse']} sampling bench on {report['device']} ({where}); "
             f"torch {m['torch']}, diffusers {report['diffusers']}; {m['date']}", "",
             f"(a) per-step overhead, {'x'.join(map(str, STEP_SHAPE))} float32, model output "
             f"fixed; copy bandwidth {c['gbps']:.1f} GB/s [{c['median_ms']:.3f} ms]{_star(c)}"]
    lines += _step_table(report["steps"])
    lines += ["", f"(a') per-step overhead of the diffusers drop-ins, "
              f"{'x'.join(map(str, SOLVER_SHAPE))} float32, step {STEPS // 2} of {STEPS}"]
    lines += _step_table(report["solver_steps"])
    lines += ["", f"(b) DDIM-{STEPS} end to end, eta 0, tiny UNet2DModel (32, 64 channels), "
              f"x {'x'.join(map(str, E2E_SHAPE))} float32"]
    body = [[r["method"], _cell(r["median_ms"] / 1e3, ".3f") + _star(r),
             _cell(r["images_per_s"], ".1f"), _cell(r.get("sampler_ms_per_step"), ".2f"),
             _cell(r.get("rel_diff_vs_diffusers"), ".1e")] for r in report["e2e"]]
    lines += _format(["method", "seconds", "images/s", "sampler ms/step", "diff vs diffusers"],
                     body)
    lines += ["", "ms/step, seconds: medians of repeated runs after a warm-up; x diffusers = "
              "diffusers' median / this median; % copy BW = the bytes the row's passes move / "
              "median, over dst.copy_(src); sampler ms/step = (total - UNet calls alone) / "
              f"{STEPS}; * = other processes used over {100 * bench.LOAD_WARNING:.0f}% of the "
              "CPUs meanwhile (slow, noisy)."]
    if report.get("malloc_keeps_freed_memory"):
        lines.append("glibc malloc told to keep freed buffers (mallopt): no page faults of fresh "
                     "tensors in the timings; --malloc-default to include them.")
    return "\n".join(lines)


def run(device=None, quick: bool = False, use_compile: bool = True) -> dict:
    import diffusers
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    budget = bench.QUICK if quick else bench.FULL
    base = bench.run((), device=device.type, quick=quick, shape=STEP_SHAPE)  # machine, copy BW
    report = {"machine": base["machine"], "device": str(device), "copy": base["copy"],
              "diffusers": diffusers.__version__, "quick": quick}
    report["steps"] = step_rows(device, budget, base["copy"]["gbps"], use_compile)
    report["solver_steps"] = step_rows(device, budget, base["copy"]["gbps"], use_compile,
                                       SOLVER_SHAPE, solver_methods)
    report["e2e"] = e2e_rows(device, E2E_BUDGET[quick])
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile rows")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 steadies timings on a CPU "
                             "that other processes share")
    parser.add_argument("--malloc-default", action="store_true",
                        help="leave glibc malloc's thresholds as they are (see keep_freed_memory)")
    parser.add_argument("--json", metavar="PATH", help="write every number and the machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = not args.malloc_default and keep_freed_memory()
    start = time.perf_counter()
    report = run(args.device, args.quick, not args.no_compile)
    report["wall_s"], report["malloc_keeps_freed_memory"] = time.perf_counter() - start, kept
    print(format_report(report))
    print(f"(benchmark wall time {report['wall_s']:.0f} s)")
    if args.json:
        bench.write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

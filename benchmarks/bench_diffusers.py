#!/usr/bin/env python3
"""diffusers models with and without ``pydiffuse.compat.diffusers.fuse``, side by side in one
run (random weights, nothing downloaded), float32:

- a whole ``DDIMPipeline`` (default 50 steps, batch 8; eta 0) on google/ddpm-cifar10-32's
  ``UNet2DModel`` configuration;
- one forward of a small ``UNet2DConditionModel`` (SD-style blocks, 4 x 32 x 32 latents, batch 2,
  a 77-token text context);

each as diffusers eager, diffusers + ``torch.compile``, fused, fused + ``torch.compile`` (on
``--device`` in ``--dtype``; the convolutions fused on the CPU in float32 only): the
median of interleaved rounds (every variant once per round, the compiled ones compiled before),
images/s, speedups against eager and against compile, the largest difference of the outputs
from eager's, and (``--profile``) the share of eager's and fused's time in convolutions and
matmuls (what fusing the norms and attention cannot touch). Benchmarks print; they never assert.

    PYTHONPATH=. python benchmarks/bench_diffusers.py [--quick] [--no-compile] [--profile]
        [--steps 50] [--batch 8] [--rounds 3] [--threads N] [--device cpu|cuda]
        [--dtype float32|bfloat16|float16] [--json FILE]
"""

import argparse
import copy
import statistics
import sys
import time

import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DConditionModel, UNet2DModel

from pydiffuse import bench
from pydiffuse.compat.diffusers import FusedDDIMScheduler, fuse

# google/ddpm-cifar10-32's config.json (35.7M parameters)
CIFAR10 = dict(sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
               down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
               attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False,
               freq_shift=1, norm_eps=1e-6)
# Stable Diffusion's block layout, narrower (SD 1.5: 320, 640, 1280, 1280 and 768-d context)
SMALL_SD = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(64, 128, 256), cross_attention_dim=256, attention_head_dim=8,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
VARIANTS = ("diffusers eager", "diffusers + compile", "fused", "fused + compile")
MATMUL_OPS = ("conv", "addmm", "aten::mm", "bmm", "matmul", "linear")


def _variants(model, compile_: bool) -> dict:
    """name -> (the model to run, the fused model under it or None)."""
    fused = fuse(copy.deepcopy(model))
    out = {"diffusers eager": model, "fused": fused}
    if compile_:
        out["diffusers + compile"] = torch.compile(copy.deepcopy(model))
        out["fused + compile"] = torch.compile(fuse(copy.deepcopy(model)))
    return {name: out[name] for name in VARIANTS if name in out}


def _pipeline_case(steps: int, batch: int, compile_: bool, device, dtype):
    torch.manual_seed(0)
    unet = UNet2DModel(**CIFAR10).eval().to(device, dtype)
    pipes = {}
    for name, model in _variants(unet, compile_).items():
        # the fused rows with the fused step too, as fuse(pipeline) sets it
        scheduler = (FusedDDIMScheduler if name.startswith("fused") else DDIMScheduler)(
            num_train_timesteps=1000)
        pipe = DDIMPipeline(unet=model, scheduler=scheduler).to(device)
        pipe.set_progress_bar_config(disable=True)
        pipes[name] = pipe

    def runner(pipe):
        def run():
            return pipe(batch_size=batch, num_inference_steps=steps, eta=0.0,
                        generator=torch.Generator().manual_seed(0), output_type="pt").images
        return run

    forward_args = (torch.randn(batch, 3, 32, 32, device=device, dtype=dtype),
                    torch.tensor(500, device=device))
    return {n: runner(p) for n, p in pipes.items()}, batch, (unet, pipes["fused"].unet,
                                                             forward_args)


def _conditional_case(batch: int, compile_: bool, device, dtype):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SMALL_SD).eval().to(device, dtype)
    args = (torch.randn(batch, 4, 32, 32, device=device, dtype=dtype),
            torch.tensor(500, device=device),
            torch.randn(batch, 77, 256, device=device, dtype=dtype))
    models = _variants(unet, compile_)

    def runner(model):
        def run():
            with torch.no_grad():
                return model(*args).sample
        return run

    return {n: runner(m) for n, m in models.items()}, batch, (unet, models["fused"], args)


def _share(model, args) -> float:
    """Share of one forward's CPU self time in convolutions and matmuls."""
    with torch.no_grad():
        model(*args)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(*args)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    heavy = sum(e.self_cpu_time_total for e in events
                if any(k in e.key.lower() for k in MATMUL_OPS))
    return heavy / total


def _time(runners: dict, rounds: int, device) -> tuple[dict, dict, dict]:
    """(name -> seconds per round, first-call seconds, outputs)."""
    def timed(fn):
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    first, outputs = {}, {}
    for name, fn in runners.items():  # warm-up; torch.compile compiles here
        outputs[name], first[name] = timed(fn)
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            times[name].append(timed(fn)[1])
    return times, first, outputs


def run(quick=False, steps=None, batch=None, rounds=None, compile_=True, profile=False,
        device="cpu", dtype="float32") -> dict:
    device, torch_dtype = torch.device(device), getattr(torch, dtype)
    steps = steps or (5 if quick else 50)
    batch = batch or (2 if quick else 8)
    rounds = rounds or (2 if quick else 3)
    report = {"machine": bench.machine_info(), "steps": steps, "batch": batch, "rounds": rounds,
              "device": str(device), "dtype": dtype, "cases": {}}
    cases = {f"DDIMPipeline cifar10 ({steps} steps, batch {batch})":
             _pipeline_case(steps, batch, compile_, device, torch_dtype),
             "UNet2DConditionModel forward (batch 2, 77 tokens)":
             _conditional_case(2, compile_, device, torch_dtype)}
    for case, (runners, images, (eager, fused, args)) in cases.items():
        load = bench.OtherLoad()
        with load:
            times, first, outputs = _time(runners, rounds, device)
        ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
        rows = []
        for name in runners:
            rows.append({"variant": name, "median_ms": ms[name],
                         "min_ms": 1e3 * min(times[name]), "first_call_s": first[name],
                         "images_per_s": images / ms[name] * 1e3,
                         "x_eager": ms["diffusers eager"] / ms[name],
                         "x_compile": (ms["diffusers + compile"] / ms[name]
                                       if "diffusers + compile" in ms else None),
                         "max_abs_diff_vs_eager": (outputs[name].float()
                                                   - outputs["diffusers eager"].float())
                         .abs().max().item()})
        entry = {"rows": rows, "other_cpu_load": load.value}
        if profile and device.type == "cpu":
            entry["conv_matmul_share"] = {"diffusers eager": _share(eager, args),
                                          "fused": _share(fused, args)}
        report["cases"][case] = entry
    return report


def format_report(report: dict) -> str:
    m = report["machine"]
    where = (m["gpu"] if report["device"].startswith("cuda") else
             f"{m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads)")
    lines = [f"pydiffuse {m['pydiffuse']}, diffusers models fused vs not on {where}, torch "
             f"{m['torch']}, {m['date']}; {report['dtype']}, median of {report['rounds']} "
             "interleaved rounds"]
    header = ("variant", "median ms", "min ms", "images/s", "x eager", "x compile",
              "first call s", "max |diff| vs eager")
    for case, entry in report["cases"].items():
        body = [(r["variant"], f"{r['median_ms']:.0f}", f"{r['min_ms']:.0f}",
                 f"{r['images_per_s']:.2f}", f"{r['x_eager']:.2f}",
                 "-" if r["x_compile"] is None else f"{r['x_compile']:.2f}",
                 f"{r['first_call_s']:.1f}", f"{r['max_abs_diff_vs_eager']:.1e}")
                for r in entry["rows"]]
        widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
        lines += ["", case]
        for row in (header, tuple("-" * w for w in widths), *body):
            lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                                   for i, (v, w) in enumerate(zip(row, widths))))
        load = entry["other_cpu_load"]
        if load is not None:
            lines.append(f"other processes used {100 * load:.0f}% of the CPUs meanwhile")
        if "conv_matmul_share" in entry:
            share = entry["conv_matmul_share"]
            lines.append("convolutions + matmuls, share of one forward: " + ", ".join(
                f"{k} {100 * v:.0f}%" for k, v in share.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 steps, batch 2, 2 rounds")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    parser.add_argument("--profile", action="store_true",
                        help="share of convolutions and matmuls in one forward")
    parser.add_argument("--json", metavar="FILE", help="write every number and the machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args.quick, args.steps, args.batch, args.rounds, not args.no_compile,
                 args.profile, args.device, args.dtype)
    print(format_report(report))
    if args.json:
        bench.write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

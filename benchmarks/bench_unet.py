#!/usr/bin/env python3
"""A whole UNet on the fused ops against the same UNet on the ``reference`` backend (pure torch):
forward (no grad, eval) and forward + backward (train, loss = mean(out^2)) of a preset
(default ``cifar10-ddpm``, batch 8), medians after warm-up, the speedup reference / fused; with
``--compile``, also torch.compile of the reference model (its compile time printed). The issue's
target: >= 1.3x on this CPU, >= 1.5x on an H100/H200. ``--profile`` adds where the time goes:
the self time of each op family (convolution, group norm, attention, the rest) per backend, from
torch.profiler (CPU runs). Benchmarks print; they never assert.

    python benchmarks/bench_unet.py [--preset cifar10-ddpm] [--batch 8] [--device cpu|cuda]
                                    [--quick] [--compile] [--profile] [--channels-last]
                                    [--json FILE]
"""

import argparse
import contextlib
import sys
import time

import torch

from pydiffuse import bench, ops
from pydiffuse.nn.presets import PRESETS, create_model

PASSES = ("forward", "forward+backward")
# Op families of the profile, by the profiler's op names (the reference backend's group norm
# and attention are plain aten ops: there they land in matmul and "elementwise, reductions").
FAMILIES = (("convolution", ("conv",)), ("group_norm", ("group_norm",)),
            ("attention", ("pydiffuse::attention", "attention_default")),
            ("matmul", ("bmm", "aten::mm", "addmm", "matmul")))


def _inputs(kwargs, batch, device, memory_format):
    gen = torch.Generator().manual_seed(0)
    size = kwargs["image_size"]
    x = torch.randn(batch, kwargs["in_channels"], size, size, generator=gen)
    x = x.contiguous(memory_format=memory_format)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    y = None
    if kwargs.get("num_classes"):
        y = torch.randint(0, kwargs["num_classes"], (batch,), generator=gen).to(device)
    return x.to(device), t.to(device), y


def _runner(model, which: str, inputs):
    """forward: the output, no graph; forward+backward: a training step's gradients."""
    x, t, y = inputs

    def forward():
        with torch.no_grad():
            return model(x, t, y)

    def train_step():
        model.zero_grad(set_to_none=True)
        model(x, t, y).square().mean().backward()

    return forward if which == "forward" else train_step


def _in_backend(fn, name):
    """fn run with the ops' backend forced (None: the default, the fused kernels)."""
    def run():
        with ops.backend(name) if name else contextlib.nullcontext():
            return fn()
    return run


def _profile(fn) -> dict:
    """CPU self time (ms per call) of each op family over 3 calls."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            fn()
    share = {name: 0.0 for name, _ in FAMILIES} | {"elementwise, reductions, rest": 0.0}
    for event in prof.key_averages():
        us = event.self_cpu_time_total
        family = next((name for name, keys in FAMILIES
                       if any(k.lower() in event.key.lower() for k in keys)),
                      "elementwise, reductions, rest")
        share[family] += us / 1e3 / 3
    return share


def run(preset="cifar10-ddpm", batch=8, device=None, quick=False, compile_ref=False,
        profile=False, channels_last=False) -> dict:
    """Times every pass x backend and returns the report (JSON-ready)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model, kwargs = create_model(preset)
    model.to(device, memory_format=memory_format)
    torch.nn.init.normal_(model.out_conv.weight, std=1e-2)  # a non-zero output to compare
    inputs = _inputs(kwargs, batch, device, memory_format)
    budget = bench.QUICK if quick else bench.FULL
    fused_name = ops.current_backend(device)
    compiled = torch.compile(model) if compile_ref else None
    report = {"machine": bench.machine_info(), "device": str(device), "preset": preset,
              "batch": batch, "channels_last": channels_last,
              "params": sum(p.numel() for p in model.parameters()),
              "budget": vars(budget), "fused_backend": fused_name, "rows": [], "profile": {}}
    for which in PASSES:
        model.train(which != "forward")
        runners = {fused_name: _in_backend(_runner(model, which, inputs), None),
                   "reference": _in_backend(_runner(model, which, inputs), "reference")}
        if compiled is not None:
            runners["compile(reference)"] = _in_backend(_runner(compiled, which, inputs),
                                                        "reference")
        outputs = {}
        for name, fn in runners.items():
            row = {"pass": which, "backend": name}
            start = time.perf_counter()
            outputs[name] = fn()  # the first call (torch.compile compiles here)
            row["first_call_s"] = time.perf_counter() - start
            load = bench.OtherLoad()
            row.update(bench._summary(bench.time_call(fn, (), device, budget, load)),
                       other_cpu_load=load.value)
            if profile and name != "compile(reference)" and device.type == "cpu":
                report["profile"][f"{which} [{name}]"] = _profile(fn)
            report["rows"].append(row)
        if which == "forward":
            ref = outputs["reference"].double()
            report["forward_rel_err"] = {
                name: ((out.double() - ref).norm() / ref.norm()).item()
                for name, out in outputs.items() if name != "reference"}
    by = {(r["pass"], r["backend"]): r["median_ms"] for r in report["rows"]}
    for row in report["rows"]:
        row["x_reference"] = by[(row["pass"], "reference")] / row["median_ms"]
    return report


def format_report(report: dict) -> str:
    m = report["machine"]
    where = m["gpu"] if report["device"].startswith("cuda") else (
        f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads")
    lines = [f"pydiffuse {m['pydiffuse']} UNet bench on {report['device']} ({where}); torch "
             f"{m['torch']}; {m['date']}",
             f"preset {report['preset']} ({report['params'] / 1e6:.2f}M parameters), batch "
             f"{report['batch']}, float32, "
             f"{'channels_last' if report['channels_last'] else 'NCHW'}; fused = the "
             f"{report['fused_backend']!r} backend", ""]
    header = ("pass", "backend", "median ms", "min ms", "reps", "x reference", "first call s")
    body, busy = [], False
    for r in report["rows"]:
        star = " *" if (r["other_cpu_load"] or 0) > bench.LOAD_WARNING else ""
        busy |= bool(star)
        body.append((r["pass"], r["backend"], f"{r['median_ms']:.1f}{star}", f"{r['min_ms']:.1f}",
                     str(r["reps"]), f"{r['x_reference']:.2f}", f"{r['first_call_s']:.1f}"))
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    for row in (header, tuple("-" * w for w in widths), *body):
        lines.append("  ".join(v.ljust(w) if i < 2 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    errs = ", ".join(f"{k} {v:.1e}" for k, v in report["forward_rel_err"].items())
    lines += ["", f"forward output vs reference, relative error: {errs}",
              "x reference = reference median / this median; first call s: the first call "
              "(torch.compile compiles in it)"]
    if busy:
        lines.append(f"* other processes used over {100 * bench.LOAD_WARNING:.0f}% of the CPUs "
                     "meanwhile (slow, noisy)")
    for key, share in report["profile"].items():
        total = sum(share.values())
        parts = ", ".join(f"{k} {v:.0f} ms ({100 * v / total:.0f}%)" for k, v in share.items())
        lines.append(f"profile {key}: {parts}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cifar10-ddpm",
                        choices=[n for n, (cls, _) in PRESETS.items() if cls.__name__ == "UNet"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--quick", action="store_true", help="few repeats")
    parser.add_argument("--compile", action="store_true",
                        help="also torch.compile of the reference model (slow to compile)")
    parser.add_argument("--profile", action="store_true", help="time per op family")
    parser.add_argument("--channels-last", action="store_true",
                        help="model and input in channels_last (both backends)")
    parser.add_argument("--json", metavar="FILE", help="write every number and the machine")
    args = parser.parse_args(argv)
    report = run(args.preset, args.batch, args.device, args.quick, args.compile, args.profile,
                 args.channels_last)
    print(format_report(report))
    if args.json:
        bench.write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

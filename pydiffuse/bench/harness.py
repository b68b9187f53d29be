"""``pydiffuse bench``: each fused op beside the same expression in PyTorch eager and
``torch.compile``, and against this machine's copy bandwidth measured in the same run.

For every case (an op with one set of options) and every compiled backend available on the
device, the table gives the median time, the ideal bytes moved (each input read once, each output
written once), GB/s, that rate as a % of ``dst.copy_(src)`` on a preallocated tensor of the same
shape and dtype, and the speedup over the eager expression and over ``torch.compile`` of it.
The eager baseline is the step equation as a user writes it, in the tensors' own dtype; for the
noise-stream case it draws its noise with ``torch.randn``. Benchmarks print; they never assert.

This module is the harness (timing, the machine, the report: table, JSON, plot); the cases are
``cases.py``, the command line ``command.py``.
"""

import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

import pydiffuse
from pydiffuse import ops
from pydiffuse.ops import _dispatch

from .cases import CASE_NAMES, make_cases

FULL_SHAPE = (16, 4, 512, 512)  # 16Mi elements: 64 MiB per float32 tensor
QUICK_SHAPE = (4, 4, 256, 256)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COMPILED_BACKENDS = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}


# ---------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Budget:
    warmup_s: float
    min_warmup: int
    target_s: float  # time spent on the timed calls of one measurement
    min_reps: int
    max_reps: int


QUICK = Budget(warmup_s=0.05, min_warmup=1, target_s=0.15, min_reps=3, max_reps=20)
LOAD_WARNING = 0.1  # other processes' share of the CPUs above which a CPU timing is starred
FULL = Budget(warmup_s=0.3, min_warmup=2, target_s=1.5, min_reps=7, max_reps=200)


class OtherLoad:
    """Share of all CPUs that other processes (and the hypervisor: steal time) used while the
    block ran, from /proc/stat less this process's own CPU time; None where unreadable.
    Other work slows and scatters CPU timings."""

    value: float | None = None

    @staticmethod
    def _busy_s():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait

    def __enter__(self):
        try:
            self._start = (self._busy_s(), time.process_time(), time.perf_counter())
        except (OSError, ValueError, IndexError):
            self._start = None
        return self

    def __exit__(self, *exc):
        if self._start is not None:
            busy, own, wall = (b - a for a, b in zip(self._start, (
                self._busy_s(), time.process_time(), time.perf_counter())))
            self.value = max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


def time_call(fn: Callable, args, device: torch.device, budget: Budget,
              load: OtherLoad | None = None) -> list[float]:
    """Seconds per call of ``fn(*args)``: warm-up, then repeats sized to the budget.

    CPU: wall clock around each call. CUDA: an event pair around each call, queued back to back
    and read after one final synchronize (as ``triton.testing.do_bench``), so host overhead is
    counted only where it leaves the GPU idle. ``load`` records other processes' CPU use
    during the timed calls.
    """
    load = load or OtherLoad()
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    start, calls = time.perf_counter(), 0
    while calls < budget.min_warmup or time.perf_counter() - start < budget.warmup_s:
        fn(*args)
        calls += 1
        if cuda:
            sync()
    estimate = (time.perf_counter() - start) / calls
    reps = int(min(budget.max_reps, max(budget.min_reps, budget.target_s / max(estimate, 1e-7))))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with load:
            return _timed_reps(fn, args, reps, cuda)
    finally:
        if gc_was_enabled:
            gc.enable()


def _timed_reps(fn, args, reps: int, cuda: bool) -> list[float]:
    if cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for begin, end in events:
            begin.record()
            fn(*args)
            end.record()
        torch.cuda.synchronize()
        return [begin.elapsed_time(end) / 1e3 for begin, end in events]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return times


def _summary(times: list[float]) -> dict:
    times = sorted(times)
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": times[0] * 1e3,
            "max_ms": times[-1] * 1e3, "reps": len(times)}


def _short(err: BaseException, limit: int = 160) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Versions, CPU and GPU of this machine, for the reports."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "pydiffuse": pydiffuse.__version__, "python": platform.python_version(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as err:  # noqa: BLE001 - any broken install is "not available"
        info["triton"] = f"not available ({_short(err, 80)})"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_count"] = torch.cuda.device_count()
    else:
        info["gpu"] = None
    module, why = _dispatch._compiled_module()
    info["pydiffuse_C"] = (
        {**{k: getattr(module, k, None) for k in ("with_cuda", "cuda_archs", "compiler")},
         "philox_lanes": module.philox_lanes()}
        if module is not None else {"error": why})
    return info


# ---------------------------------------------------------------------------------------------
# The run


def _inputs(count: int, shape, dtype, device, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(count)]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _row(op, backend, dtype_name, shape, nbytes, times=None, error=None, **extra) -> dict:
    row = {"op": op, "backend": backend, "dtype": dtype_name, "shape": list(shape),
           "numel": math.prod(shape), "bytes": nbytes, "error": error, **extra}
    if times:
        row.update(_summary(times))
        row["gbps"] = nbytes / 1e9 / (row["median_ms"] / 1e3)
    return row


def bench_case(op, case, shape, dtype, device, budget, backends, notes, bar) -> list[dict]:
    """The rows of one case: eager, torch.compile, then each backend; failures become 'n/a'."""
    torch_dtype = DTYPES[dtype]
    if case.shape is not None:
        shape = case.quick_shape if budget is QUICK else case.shape
    nbytes = (case.reads + case.writes) * math.prod(shape) * torch_dtype.itemsize
    args = (case.inputs(shape, torch_dtype, device) if case.inputs
            else _inputs(case.reads, shape, torch_dtype, device, seed=1))
    flops = case.flops(shape) if case.flops else None
    rows, expected = {}, None

    def measure(name, fn, **extra):
        bar.set_postfix_str(f"{op} {name}")
        load = OtherLoad()
        try:
            times = time_call(fn, args, device, budget, load)
            rows[name] = _row(op, name, dtype, shape, nbytes, times, other_cpu_load=load.value,
                              **extra)
            if flops:
                rows[name]["tflops"] = flops / 1e12 / statistics.median(times)
        except Exception as err:  # noqa: BLE001 - a benchmark reports, it does not crash
            rows[name] = _row(op, name, dtype, shape, nbytes, error=_short(err))
        bar.update()

    try:
        expected = case.eager(*args)
    except Exception:  # noqa: BLE001 - reported by measure()
        pass
    measure("eager", case.eager)
    try:  # the first call compiles
        t0 = time.perf_counter()
        compiled = case.compiled() if case.compiled else torch.compile(case.eager)
        compiled(*args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - t0
    except Exception as err:  # noqa: BLE001
        rows["compile"] = _row(op, "compile", dtype, shape, nbytes, error=_short(err))
        bar.update()
    else:
        measure("compile", compiled, compile_s=compile_s)
    for name in backends:
        with ops.backend(name):
            try:
                result = case.fused(*args)
            except Exception as err:  # noqa: BLE001
                rows[name] = _row(op, name, dtype, shape, nbytes, error=_short(err))
                bar.update()
                continue
            rel = _rel_err(result, expected) if case.comparable and expected is not None else None
            del result
            measure(name, case.fused, rel_err_vs_eager=rel, about=case.about)
        tol = 1e-5 if torch_dtype == torch.float32 else 2e-2
        if rel is not None and not rel <= tol:
            notes.append(f"{op} [{name}] differs from eager: relative error {rel:.2e}")

    eager_ms, compile_ms = rows["eager"].get("median_ms"), rows["compile"].get("median_ms")
    for row in rows.values():
        ms = row.get("median_ms")
        row["x_eager"] = eager_ms / ms if ms and eager_ms else None
        row["x_compile"] = compile_ms / ms if ms and compile_ms else None
        if row["error"]:
            notes.append(f"{op} [{row['backend']}] n/a: {row['error']}")
    return list(rows.values())


def run(ops_names=CASE_NAMES, *, dtype="float32", device=None, quick=False, shape=None) -> dict:
    """Runs the benchmark and returns every number (the JSON report).

    Args:
        ops_names: case names (``CASE_NAMES``).
        dtype: "float32", "bfloat16" or "float16".
        device: "cpu", "cuda" or None (cuda when available).
        quick: small size and few repeats.
        shape: overrides the size ([B, C, H, W] or any [B, ...]).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible to torch")
    torch_dtype = DTYPES[dtype]
    shape = tuple(shape or (QUICK_SHAPE if quick else FULL_SHAPE))
    budget = QUICK if quick else FULL
    numel, itemsize = math.prod(shape), torch_dtype.itemsize
    cases = make_cases(shape, torch_dtype, device)
    unknown = [n for n in ops_names if n not in cases]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; choose from {', '.join(cases)}")
    backends, notes = [], []
    for name in COMPILED_BACKENDS.get(device.type, ()):
        why = _dispatch.unavailable_reason(name, device.type)
        (notes.append(f"backend {name} skipped: {why}") if why else backends.append(name))

    report = {"machine": machine_info(), "device": str(device), "dtype": dtype,
              "shape": list(shape), "quick": quick, "budget": dataclasses.asdict(budget),
              "backends": backends, "rows": [], "notes": notes}

    # The ceiling: copy into a preallocated tensor of the same size, in this run.
    src, dst = _inputs(2, shape, torch_dtype, device)
    copy_bytes, load = 2 * numel * itemsize, OtherLoad()
    copy = _summary(time_call(dst.copy_, (src,), device, budget, load))
    clone = _summary(time_call(src.clone, (), device, budget))
    report["copy"] = {"bytes": copy_bytes, **copy, "other_cpu_load": load.value,
                      "gbps": copy_bytes / 1e9 / (copy["median_ms"] / 1e3),
                      "clone_median_ms": clone["median_ms"],
                      "clone_gbps": copy_bytes / 1e9 / (clone["median_ms"] / 1e3)}
    del src, dst

    from tqdm.auto import tqdm
    bar = tqdm(total=len(ops_names) * (2 + len(backends)), desc="bench", unit="run",
               leave=False, file=sys.stderr, disable=None)
    for op in ops_names:
        report["rows"] += bench_case(op, cases[op], shape, dtype, device, budget, backends,
                                     notes, bar)
    bar.close()
    for row in report["rows"]:
        row["pct_copy_bw"] = (100 * row["gbps"] / report["copy"]["gbps"]
                              if row.get("gbps") else None)
    loads = [r.get("other_cpu_load") for r in report["rows"] + [report["copy"]]]
    busy = max((v for v in loads if v is not None), default=0.0)
    if busy > LOAD_WARNING and device.type == "cpu":
        notes.append(f"* other processes used up to {100 * busy:.0f}% of the CPUs while this run "
                     "timed the starred rows (or the copy): those CPU timings are slow and noisy; "
                     "rerun on a quiet machine")
    return report


# ---------------------------------------------------------------------------------------------
# Output


def format_table(report: dict) -> str:
    """The aligned table, with the machine and the copy bandwidth above it and notes below."""
    m, c = report["machine"], report["copy"]
    loads = [r.get("other_cpu_load") or 0.0 for r in report["rows"]]
    any_star = report["device"] == "cpu" and max(loads, default=0.0) > LOAD_WARNING

    def starred(r):  # rows timed while other processes used the CPUs
        load = r.get("other_cpu_load") if report["device"] == "cpu" else None
        return " *" if load is not None and load > LOAD_WARNING else "  " if any_star else ""

    def cell(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    where = m["gpu"] if report["device"].startswith("cuda") else (
        f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads")
    lines = [
        f"pydiffuse {m['pydiffuse']} bench on {report['device']} ({where}); torch {m['torch']}, "
        f"triton {m['triton']}; {m['date']}",
        f"shape {'x'.join(map(str, report['shape']))} {report['dtype']}; copy bandwidth "
        f"(dst.copy_(src), preallocated, same size): {c['gbps']:.1f} GB/s "
        f"[{c['median_ms']:.3f} ms]{starred(c).rstrip()}; "
        f"clone (allocating): {c['clone_gbps']:.1f} GB/s",
        "",
    ]
    header = ("op", "backend", "dtype", "size", "median ms", "GB/s", "% copy BW", "TFLOP/s",
              "x eager", "x compile")

    body = [(r["op"], r["backend"], r["dtype"], "x".join(map(str, r["shape"])),
             cell(r.get("median_ms"), ".3f") + starred(r), cell(r.get("gbps"), ".1f"),
             cell(r.get("pct_copy_bw"), ".0f"),
             cell(r.get("tflops"), ".3f") if r.get("tflops") else "-",
             cell(r.get("x_eager"), ".2f"), cell(r.get("x_compile"), ".2f"))
            for r in report["rows"]]
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    left = 2  # op and backend are left-aligned, numbers right-aligned

    def fmt(row):
        return "  ".join(v.ljust(w) if i < left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(row, widths))).rstrip()

    lines += [fmt(header), fmt(["-" * w for w in widths])]
    previous = None
    for row in body:
        if previous is not None and row[0] != previous:
            lines.append("")
        lines.append(fmt(row))
        previous = row[0]
    lines += ["", "bytes: each input read once, each output written once; GB/s = bytes / median; "
              "TFLOP/s for attention (matmul FLOPs); "
              "x eager, x compile = their median / this median."]
    abouts = {r["op"]: r.get("about") for r in report["rows"] if r.get("about")}
    lines += [f"{op}: {about}" for op, about in abouts.items()]
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """Bar charts: speedup over eager and torch.compile; % of copy bandwidth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fused = [r for r in report["rows"] if r["backend"] not in ("eager", "compile")]
    names = [f"{r['op']}\n[{r['backend']}]" for r in fused]
    pos = range(len(fused))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(fused)), 4.5))
    width = 0.4
    ax1.bar([p - width / 2 for p in pos], [r["x_eager"] or math.nan for r in fused], width,
            label="x eager")
    ax1.bar([p + width / 2 for p in pos], [r["x_compile"] or math.nan for r in fused], width,
            label="x torch.compile")
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.set_yscale("log")
    ax1.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    ax1.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax1.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax1.set_ylabel("speedup (higher is faster, log scale)")
    ax1.legend()
    rows_by = {(r["op"], r["backend"]): r for r in report["rows"]}
    width = 0.27
    for k, who in enumerate(("eager", "compile", None)):
        values = [(rows_by.get((r["op"], who)) if who else r) for r in fused]
        ax2.bar([p + (k - 1) * width for p in pos], [(v or {}).get("pct_copy_bw") or math.nan
                                                     for v in values],
                width, label=who or "pydiffuse")
    ax2.axhline(100.0, color="k", lw=0.8)
    ax2.set_ylabel("% of copy bandwidth")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xticks(list(pos), names, rotation=45, ha="right", fontsize=8)
    m = report["machine"]
    device = m["gpu"] if report["device"].startswith("cuda") else m["cpu"]
    fig.suptitle(f"pydiffuse bench: {'x'.join(map(str, report['shape']))} {report['dtype']} "
                 f"on {device}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(report: dict, path: str) -> None:
    """The report (every number and the machine) as JSON at ``path``."""
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path}")

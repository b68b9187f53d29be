"""``pydiffuse bench --sweep``: ops timed across many shapes, each beside eager PyTorch and
``torch.compile`` of the same expression, the candidates of a row alternated round by round
(median of the rounds), so that load from other processes falls on all of them alike.

- ``unet``: ``group_norm`` and ``attention`` at the shapes of ``unet_shapes.UNET_SHAPES``:
  eager, torch.compile, the backend's kernel (forced) and the default dispatch (which runs eager
  PyTorch below the sizes of ``pydiffuse.ops.thresholds``).
- ``shapes``: the step ops (``sample_step`` with noise given and from the stream,
  ``langevin_step``, ``lincomb`` of 4 tensors, ``randn``) at one element count laid out
  image-shaped, [N/16, 16], [N/2, 2] and 1-D (N = 2^24; 2^20 with ``--quick``), and a
  small-tensor latency row [1, 4, 64, 64]: eager, torch.compile and pydiffuse.

Ratios are the baseline's median over pydiffuse's: above 1, pydiffuse is faster.
"""

import gc
import math
import os
import statistics
import time

import torch

from pydiffuse import ops

from .cases import make_cases
from .harness import DTYPES, LOAD_WARNING, OtherLoad, _inputs, _short, machine_info
from .unet_shapes import UNET_SHAPES

SWEEPS = ("unet", "shapes")
STEP_OPS = ("sample_step", "sample_step_seed", "langevin_step", "lincomb", "randn")
SHAPES_NUMEL, QUICK_SHAPES_NUMEL = 2**24, 2**20
LATENCY_SHAPE = (1, 4, 64, 64)
# (rounds, seconds per timed sample): each sample runs enough calls to last that long
FULL_ROUNDS, QUICK_ROUNDS = (21, 2e-3), (7, 5e-4)


def layouts(numel: int) -> list[tuple[int, ...]]:
    """``numel`` elements image-shaped [B, 4, H, H], as [N/16, 16], [N/2, 2] and 1-D."""
    side = math.isqrt(numel // 64)
    return [(16, 4, side, side), (numel // 16, 16), (numel // 2, 2), (numel,)]


def time_interleaved(fns: dict, device: torch.device, rounds: int, sample_s: float) -> dict:
    """{name: median seconds per call}: each fn warmed up (a compile happens here), then
    ``rounds`` rounds that time each fn in turn over a block of calls lasting ``sample_s``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    calls = {}
    for name, fn in fns.items():
        fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        calls[name] = max(1, int(sample_s / max(time.perf_counter() - t0, 1e-7)))
    times = {name: [] for name in fns}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for name, fn in fns.items():
                sync()
                t0 = time.perf_counter()
                for _ in range(calls[name]):
                    fn()
                sync()
                times[name].append((time.perf_counter() - t0) / calls[name])
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: statistics.median(t) for name, t in times.items()}


def _compiled(fn):
    """torch.compile of ``fn`` from a clean slate: every row compiles its own shapes (one
    function compiled for many rows would hit dynamo's recompile limit and run eagerly)."""
    torch._dynamo.reset()
    return torch.compile(fn)


def _group_norm_case(entry, device):
    """(eager, fused, args) of a group_norm entry (unet_shapes' eager expression)."""
    opts, shape = entry["options"], entry["shapes"]["x"]
    like = dict(dtype=DTYPES[opts["dtype"]], device=device)
    gen = torch.Generator(device=device).manual_seed(5)
    batch, channels, groups, silu = shape[0], shape[1], opts["num_groups"], opts["act"] == "silu"
    x = torch.randn(shape, generator=gen, **like)
    if opts["memory_format"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    affine = [torch.randn(channels, generator=gen, **like) if opts["affine"] else None
              for _ in range(2)]
    adagn = [torch.randn(batch, channels, generator=gen, **like) * 0.1 if opts["adagn"] else None
             for _ in range(2)]
    per_channel = [batch, channels] + [1] * (len(shape) - 2)

    def eager(x, weight, bias, scale, shift):
        y = torch.nn.functional.group_norm(x, groups, weight, bias)
        if scale is not None:
            y = y * (1 + scale.reshape(per_channel)) + shift.reshape(per_channel)
        return torch.nn.functional.silu(y) if silu else y

    def fused(x, weight, bias, scale, shift):
        return ops.group_norm(x, groups, weight, bias, scale=scale, shift=shift,
                              act=opts["act"])

    return eager, fused, (x, *affine, *adagn)


def _attention_case(entry, device):
    """(eager, fused, args) of an attention entry: F.scaled_dot_product_attention."""
    like = dict(dtype=DTYPES[entry["options"]["dtype"]], device=device)
    gen = torch.Generator(device=device).manual_seed(6)
    q_shape, kv_shape = entry["shapes"]["q"], entry["shapes"]["kv"]
    args = [torch.randn(s, generator=gen, **like) for s in (q_shape, kv_shape, kv_shape)]
    return torch.nn.functional.scaled_dot_product_attention, ops.attention, tuple(args)


def _candidates(eager, fused, args, kernel=None) -> dict:
    """name -> a maker of the timed call (making the compile candidate compiles; a maker or its
    first call may fail, and is then reported): eager, compile, the kernel forced (where
    ``kernel`` names the backend), pydiffuse (the default dispatch)."""
    def compiled():
        fn = _compiled(eager)
        return lambda: fn(*args)

    def forced():
        with ops.backend(kernel):
            return fused(*args)

    makers = {"eager": lambda: lambda: eager(*args), "compile": compiled}
    if kernel:
        makers["kernel"] = lambda: forced
    makers["pydiffuse"] = lambda: lambda: fused(*args)
    return makers


def _row(label, op, shape, dtype, fns, device, budget) -> dict:
    """Times the candidates ``fns`` (``_candidates``) interleaved; one that fails is reported,
    not fatal."""
    row = {"label": label, "op": op, "shape": shape, "dtype": dtype, "errors": {}}
    ok = {}
    for name, make in fns.items():
        try:
            fn = make()
            fn()
            ok[name] = fn
        except Exception as err:  # noqa: BLE001 - a benchmark reports, it does not crash
            row["errors"][name] = _short(err)
    load = OtherLoad()
    with load:
        medians = time_interleaved(ok, device, *budget) if ok else {}
    row["other_cpu_load"] = load.value
    row.update({f"{name}_us": medians.get(name, math.nan) * 1e6 for name in fns})
    mine = row["pydiffuse_us"]
    for base in ("eager", "compile"):
        row[f"x_{base}"] = row[f"{base}_us"] / mine
    if "kernel_us" in row:
        row["kernel_x_eager"] = row["eager_us"] / row["kernel_us"]
    return row


def _unet_rows(device, budget, entries, progress):
    kernel = ops.current_backend(device)
    for entry in entries:
        make = _group_norm_case if entry["op"] == "group_norm" else _attention_case
        fns = _candidates(*make(entry, device), kernel=kernel)
        shape = entry["shapes"].get("x") or [entry["shapes"]["q"], entry["shapes"]["kv"]]
        progress(entry["label"])
        yield _row(entry["label"], entry["op"], shape, entry["options"]["dtype"], fns, device,
                   budget)


def _shapes_rows(device, budget, shapes, op_names, progress):
    for shape in shapes:
        cases = make_cases(shape, torch.float32, device)
        for op in op_names:
            case = cases[op]
            args = _inputs(case.reads, shape, torch.float32, device, seed=1)
            fns = _candidates(case.eager, case.fused, args)
            label = f"{op} {'x'.join(map(str, shape))}"
            progress(label)
            yield _row(label, op, list(shape), "float32", fns, device, budget)


def run_sweep(name: str, *, quick=False, device=None, entries=None, shapes=None,
              op_names=STEP_OPS, progress=None) -> dict:
    """The sweep ``name`` ("unet" or "shapes") as a report: machine, threads, load, rows.

    Args:
        quick: fewer, shorter rounds; the shapes sweep at 2^20 elements.
        device: "cpu", "cuda" or None (cuda when available).
        entries: the unet sweep's entries (default ``UNET_SHAPES``).
        shapes: the shapes sweep's shapes (default ``layouts`` of 2^24 or 2^20 elements, then
            ``LATENCY_SHAPE``); op_names: its ops.
        progress: called with each row's label before it is timed.
    """
    if name not in SWEEPS:
        raise ValueError(f"unknown sweep {name!r}; choose one of {', '.join(SWEEPS)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    budget = QUICK_ROUNDS if quick else FULL_ROUNDS
    progress = progress or (lambda label: None)
    if name == "unet":
        rows = _unet_rows(device, budget, UNET_SHAPES if entries is None else entries, progress)
    else:
        shapes = shapes or layouts(QUICK_SHAPES_NUMEL if quick else SHAPES_NUMEL) + [
            LATENCY_SHAPE]
        rows = _shapes_rows(device, budget, shapes, op_names, progress)
    report = {"sweep": name, "machine": machine_info(), "device": str(device), "quick": quick,
              "rounds": budget[0], "sample_s": budget[1], "loadavg_before": os.getloadavg()}
    report["rows"] = list(rows)
    report["loadavg_after"] = os.getloadavg()
    return report


def format_sweep(report: dict) -> str:
    """The sweep's table: machine and load above, one row per shape, errors below."""
    m = report["machine"]
    where = m["gpu"] if report["device"].startswith("cuda") else (
        f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads")
    load = " ".join(f"{v:.2f}" for v in report["loadavg_before"])
    lines = [f"pydiffuse {m['pydiffuse']} bench --sweep {report['sweep']} on {report['device']} "
             f"({where}); torch {m['torch']}; {m['date']}",
             f"median of {report['rounds']} interleaved rounds; load average before: {load}", ""]
    kernel = "kernel_us" in (report["rows"] or [{}])[0]
    header = (["row", "dtype", "eager us", "compile us"] + (["kernel us"] if kernel else []) +
              ["pydiffuse us", "x eager", "x compile"] + (["kernel x eager"] if kernel else []))

    def cell(value, fmt):
        return "n/a" if value is None or math.isnan(value) else format(value, fmt)

    body = []
    for r in report["rows"]:
        star = " *" if (r.get("other_cpu_load") or 0) > LOAD_WARNING else ""
        body.append([r["label"] + star, r["dtype"], cell(r["eager_us"], ".1f"),
                     cell(r["compile_us"], ".1f")] +
                    ([cell(r["kernel_us"], ".1f")] if kernel else []) +
                    [cell(r["pydiffuse_us"], ".1f"), cell(r["x_eager"], ".2f"),
                     cell(r["x_compile"], ".2f")] +
                    ([cell(r["kernel_x_eager"], ".2f")] if kernel else []))
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths]] + body:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    lines += ["", "x eager, x compile: their median / pydiffuse's (above 1: pydiffuse is faster)"
              + ("; kernel: the backend's kernel forced, pydiffuse: the default dispatch (eager "
                 "PyTorch below pydiffuse.ops.thresholds)" if kernel else "")]
    if any((r.get("other_cpu_load") or 0) > LOAD_WARNING for r in report["rows"]):
        lines.append(f"* other processes used over {100 * LOAD_WARNING:.0f}% of the CPUs while "
                     "the row was timed")
    lines += [f"note: {r['label']} [{who}] n/a: {err}" for r in report["rows"]
              for who, err in r["errors"].items()]
    return "\n".join(lines)

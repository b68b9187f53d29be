"""The command line of ``pydiffuse bench`` (also ``python -m pydiffuse.bench`` and
``benchmarks/bench_ops.py``): the per-op table of ``harness.run``, or with ``--sweep`` the shape
sweeps of ``sweeps.py``."""

import argparse
import sys
import time

import torch

from pydiffuse.utils import check_writable

from .cases import CASE_NAMES
from .harness import DTYPES, FULL_SHAPE, QUICK_SHAPE, _short, format_table, plot, run, write_json
from .sweeps import SWEEPS, format_sweep, run_sweep


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"small size {'x'.join(map(str, QUICK_SHAPE))}, few repeats")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--ops", default=",".join(CASE_NAMES),
                        help=f"comma-separated, from: {', '.join(CASE_NAMES)}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--shape", default=None,
                        help=f"e.g. 16,4,512,512 (default {','.join(map(str, FULL_SHAPE))})")
    parser.add_argument("--json", metavar="FILE", help="write every number and the machine")
    parser.add_argument("--plot", metavar="FILE.png", help="bar chart (needs matplotlib)")
    parser.add_argument("--sweep", choices=SWEEPS, default=None,
                        help="instead of the table: unet = group_norm and attention at a UNet's "
                             "shapes; shapes = the step ops at one size laid out four ways and a "
                             "small-tensor row (--quick: 1/16 the elements); --dtype, --ops and "
                             "--shape do not apply")


def run_from_args(args: argparse.Namespace) -> dict:
    names = [n.strip() for n in args.ops.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--ops names no op; choose from {', '.join(CASE_NAMES)}")
    try:
        shape = [int(d) for d in args.shape.split(",")] if args.shape else None
    except ValueError:
        raise ValueError(f"--shape must be comma-separated ints, got {args.shape!r}") from None
    if shape is not None and min(shape) < 1:
        raise ValueError(f"--shape must be positive ints (e.g. "
                         f"{','.join(map(str, QUICK_SHAPE))}), got {args.shape!r}")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path:                    # before the benchmark, not after it
            check_writable(path, flag)
    if args.sweep:
        return _run_sweep_from_args(args)
    t0 = time.perf_counter()
    report = run(names, dtype=args.dtype, device=args.device, quick=args.quick, shape=shape)
    report["wall_s"] = time.perf_counter() - t0
    print(format_table(report))
    print(f"(benchmark wall time {report['wall_s']:.1f} s)")
    if args.json:
        write_json(report, args.json)
    if args.plot:
        try:
            plot(report, args.plot)
            print(f"wrote {args.plot}")
        except ImportError as err:
            print(f"no plot: {err} (pip install matplotlib)")
        except Exception as err:  # noqa: BLE001 - the numbers above are what matters
            print(f"no plot: {_short(err)}")
    return report


def _run_sweep_from_args(args: argparse.Namespace) -> dict:
    if args.plot:
        raise ValueError("--plot draws the per-op table, not a --sweep")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible to torch")
    t0 = time.perf_counter()
    report = run_sweep(args.sweep, quick=args.quick, device=args.device,
                       progress=lambda label: print(f"  timing {label}", file=sys.stderr))
    report["wall_s"] = time.perf_counter() - t0
    print(format_sweep(report))
    print(f"(sweep wall time {report['wall_s']:.1f} s)")
    if args.json:
        write_json(report, args.json)
    return report


def main(argv=None, prog=None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_from_args(args)
    except (ValueError, RuntimeError) as err:
        parser.exit(2, f"pydiffuse bench: {err}\n")
    return 0

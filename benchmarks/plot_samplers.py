#!/usr/bin/env python3
"""Every registered sampler against the exact 8-D Gaussian mixture: sliced Wasserstein distance
to the truth vs model evaluations (log-log), one line per sampler, deterministic solid and
stochastic dashed (at the sampler's default options).

Each sampler runs with its default options on the first process kind it supports of a VP SDE,
a linear DDPM schedule and a 10-level noise ladder, on the exact ε of ``pydiffuse.nn.mixture_8d``
for that process, from the same seeded x_T; a fixed-step sampler at several step counts, an
adaptive one (``Sampler.is_adaptive``) at several tolerances (rtol = atol); a setting the
sampler refuses (``pc`` on the VP SDE needs more steps than beta_max) is left out. The distance is
``pydiffuse.nn.distance_to_truth`` (SW_2 over fixed seeded projections to fixed exact draws);
the dotted line is its noise floor, the distance of N other exact draws. The x-axis is the
model calls each run made (``return_info``). Benchmarks print; they never assert.

    python benchmarks/plot_samplers.py [--quick] [--n N] [--out PATH.png] [--threads T]

writes PATH.png and PATH.json (default ``benchmarks/results/samplers-8d.png``; ``--quick``, a
smoke run on fewer samples and step counts, writes files only with ``--out``).
"""

import argparse
import json
import pathlib
import time

import matplotlib
import torch

import pydiffuse
from pydiffuse.nn import distance_to_truth, mixture_8d
from pydiffuse.samplers import SAMPLERS
from pydiffuse.schedules import geometric_sigmas, linear
from pydiffuse.sde import VPSDE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = pathlib.Path(__file__).parent / "results" / "samplers-8d.png"
PROCESSES = {"sde": VPSDE, "discrete": lambda: linear(1000),
             "ladder": lambda: geometric_sigmas(20.0, 0.01, 10)}    # in order of preference
OPTIONS = {"ald": {"step_lr": 3e-5}}        # NCSN's step size for this ladder (tests/samplers)
STEPS, QUICK_STEPS = (4, 8, 16, 32, 64), (8, 32)
TOLERANCES, QUICK_TOLERANCES = (0.1, 0.03, 0.01, 0.003, 0.001), (0.1, 0.01)


def run_sampler(name: str, n: int, quick: bool) -> dict:
    """One sampler's sweep: its process, whether it is stochastic, and (setting, nfe, SW_2)."""
    entry = SAMPLERS[name]
    kind = next(k for k in PROCESSES if k in entry.processes)
    process = PROCESSES[kind]()
    mixture = mixture_8d(process, "eps")
    options = OPTIONS.get(name, {})
    if entry.is_adaptive(options):
        tolerances = QUICK_TOLERANCES if quick else TOLERANCES
        settings = [{"rtol": tol, "atol": tol} for tol in tolerances]
    else:
        settings = [{"steps": s} for s in (QUICK_STEPS if quick else STEPS)]
    points, refused = [], []
    for setting in settings:
        try:
            x, info = pydiffuse.sample(mixture, (n, mixture.dim), process=process, sampler=name,
                                       prediction="eps", seed=0, progress=False,
                                       return_info=True, **options, **setting)
        except ValueError as err:             # e.g. pc's VP chain needs more than beta_max steps
            refused.append({**setting, "error": str(err)})
            continue
        points.append({**setting, "nfe": info["nfe"], "sw": distance_to_truth(x, mixture)})
    return {"process": kind, "stochastic": entry.is_stochastic(options), "points": points,
            "refused": refused}


def plot(report: dict, path: pathlib.Path):
    """Distance vs model calls, log-log; solid deterministic, dashed stochastic."""
    fig, ax = plt.subplots(figsize=(9.5, 5.5))
    colors, markers = plt.get_cmap("tab20").colors, "os^vD"
    for i, (name, run) in enumerate(report["samplers"].items()):
        if not run["points"]:
            continue
        nfe, sw = zip(*[(p["nfe"], p["sw"]) for p in run["points"]])
        ax.plot(nfe, sw, "--" if run["stochastic"] else "-", marker=markers[i % len(markers)],
                markersize=4, color=colors[i % len(colors)], label=name)
    ax.axhline(report["noise_floor"], color="k", linestyle=":", label="noise floor")
    ax.set(xscale="log", yscale="log", xlabel="model evaluations",
           ylabel="sliced Wasserstein distance to the truth",
           title=f"Samplers on the exact 8-D Gaussian mixture ({report['n']} samples; "
                 "dashed: stochastic)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and step counts")
    parser.add_argument("--n", type=int, help="samples per run (default 2000; 500 with --quick)")
    parser.add_argument("--out", type=pathlib.Path, help=f"the PNG (default {OUT}); JSON beside")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared CPU, 2 run 20x slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n or (500 if args.quick else 2000)
    out = args.out or (None if args.quick else OUT)
    mixture = mixture_8d()
    report = {"n": n, "noise_floor": distance_to_truth(mixture.sample(n, seed=1), mixture),
              "samplers": {}}
    for name in SAMPLERS:
        start = time.perf_counter()
        run = report["samplers"][name] = run_sampler(name, n, args.quick)
        print(f"{name:20s} {run['process']:8s} {'stochastic' if run['stochastic'] else '':10s} "
              + "  ".join(f"{p['nfe']}: {p['sw']:.3f}" for p in run["points"])
              + "".join(f"  refused {p['steps']} steps" for p in run["refused"])
              + f"  ({time.perf_counter() - start:.1f} s)", flush=True)
    print(f"noise floor {report['noise_floor']:.3f}")
    if out is not None:
        plot(report, out)
        out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()

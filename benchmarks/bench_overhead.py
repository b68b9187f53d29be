"""The host overhead of one fused-op call and of a sampler step (issue 15), measured side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_overhead.py [--threads 1] [--repeats 31]
        [--device cpu]

(``PYTHONPATH=.``: the checkout's pydiffuse, also from a git worktree beside an editable
install; the script needs nothing of the library beyond its public ops and samplers, so the
same script times two checkouts.)

Per op on a [1, 4, 64, 64] float32 tensor (medians over ``--repeats`` rounds, the candidates of a
row interleaved round by round so that a change of machine load hits them alike):

- total: the public call, ``pydiffuse.ops.sample_step(x, out, coefs)`` with a ``StepCoefs`` of
  Python floats (the samplers' case on the CPU);
- kernel-only: ``torch.ops.pydiffuse.<op>`` called directly with the table and seeds packed
  beforehand (what the op costs without the Python wrapper; this goes through torch's dispatcher
  and the autograd layer that ``torch.library.register_autograd`` installs);
- below-autograd: the same ``torch.ops`` call under ``torch._C._AutoDispatchBelowAutograd()``,
  the kernel with only the dispatcher in front of it;
- overhead = total - kernel-only (negative when the wrapper skips work that a direct
  ``torch.ops`` call does);
- wrapper = total - below-autograd: everything the public call adds to the cheapest way to
  reach the kernel;
- torch.add: one ``torch.add(x, y)`` of the same tensors, the cheapest eager op, for scale.

Then a DDIM-50 loop on a model that returns a precomputed tensor, so everything timed is the
sampler's own work: ``pydiffuse.sample(..., sampler="ddim", steps=50)`` per step, the marginal
cost of a step ((T(100 steps) - T(50 steps)) / 50, without the per-run setup), the same with a
new schedule every run (its coefficients never seen before: what a first run pays), and the
same DDIM update written as an eager PyTorch loop (the model call, t, then x0 / eps / x_prev as
torch ops on Python-float coefficients).

No asserts: it prints a table (and ``uptime``: the machines are shared, so repeat a figure before
trusting it).
"""

import argparse
import os
import statistics
import time

import torch

import pydiffuse
from pydiffuse.ops import StepCoefs, langevin_step, lincomb, randn, sample_step
from pydiffuse.samplers.ddim import ddim_schedule, ddim_table
from pydiffuse.schedules import linear

SHAPE = (1, 4, 64, 64)


def _per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def compare(fns: dict, *, repeats: int, budget_s: float = 0.02) -> dict:
    """{name: median us per call}, the functions interleaved round by round."""
    for fn in fns.values():                          # warm up, and size the rounds
        fn()
    calls = {name: max(1, int(budget_s / max(_per_call(fn, 20) * 1e-6, 1e-7)))
             for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(_per_call(fn, calls[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def below_autograd(op, *args):
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def op_rows(device, repeats: int) -> list:
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(SHAPE, generator=g).to(device) for _ in range(2))
    batch = SHAPE[0]
    coefs = StepCoefs(cx=1.1, co=-0.3, ex=0.2, e0=0.5, m0=0.9, me=0.4)
    coefs_s = StepCoefs(cx=1.1, co=-0.3, ex=0.2, e0=0.5, m0=0.9, me=0.4, s=0.1)

    def table(values):  # the packed layout of ops/_packing.py: float32 [rows, B]
        return torch.tensor(values).unsqueeze(1).expand(len(values), batch).contiguous().to(
            device)

    def step_table(c):  # rows cx co ex e0 m0 me mx s, then guidance clip log_lo log_hi
        return table([c.cx, c.co, c.ex, c.e0, c.m0, c.me, c.mx, c.s, 0.0, 0.0, 0.0, 0.0])

    seeds = torch.tensor([7], dtype=torch.int64, device=device)
    ops = torch.ops.pydiffuse
    tab, tab_s = step_table(coefs), step_table(coefs_s)
    tab_lin = table([0.9, 0.1])
    tab_lan = table([0.01, 0.0])
    cases = [
        ("sample_step", lambda: sample_step(x, y, coefs),
         (ops.sample_step.default, x, y, None, tab, None, None, 0, False, False, False)),
        ("sample_step seed=, x0", lambda: sample_step(x, y, coefs_s, seed=7, step=1,
                                                      return_x0=True),
         (ops.sample_step.default, x, y, None, tab_s, None, seeds, 1, False, False, True)),
        ("lincomb 2 tensors", lambda: lincomb([x, y], [0.9, 0.1]),
         (ops.lincomb.default, [x, y], tab_lin)),
        ("langevin_step seed=", lambda: langevin_step(x, y, 0.01, seed=7, step=1),
         (ops.langevin_step.default, x, y, tab_lan, False, False, None, seeds, 1, False)),
        ("randn", lambda: randn(list(SHAPE), 7, 1, device=device),
         (ops.randn.default, seeds, list(SHAPE), 1, torch.float32)),
    ]
    rows = []
    for name, public, (op, *args) in cases:
        t = compare({"total": public, "kernel": lambda: op(*args),
                     "below": lambda: below_autograd(op, *args),
                     "add": lambda: torch.add(x, y)}, repeats=repeats)
        rows.append((name, "x".join(map(str, SHAPE)), t["total"], t["kernel"],
                     t["total"] - t["kernel"], t["below"], t["total"] - t["below"], t["add"]))
    return rows


class Precomputed(torch.nn.Module):
    """A model whose call costs nothing: it returns the same tensor every time."""

    def __init__(self, out):
        super().__init__()
        self.register_buffer("out", out)

    def forward(self, x, t):
        return self.out


def eager_ddim(model, x, process, steps: int):
    """The DDIM (eta = 0) update as plain PyTorch ops, coefficients as Python floats."""
    sched = ddim_schedule(process, steps)
    c = {k: v.tolist() for k, v in ddim_table(sched, "eps", 0.0).items()}
    times = sched.timesteps.to(torch.long).to(x.device)
    for k in range(len(sched)):
        i = len(sched) - 1 - k
        out = model(x, times[i].expand(x.shape[0]))
        x0 = c["cx"][i] * x + c["co"][i] * out
        eps = c["ex"][i] * x + c["e0"][i] * x0
        x = c["m0"][i] * x0 + c["me"][i] * eps
    return x


def ddim_rows(device, repeats: int) -> list:
    g = torch.Generator().manual_seed(1)
    x_T, out = (torch.randn(SHAPE, generator=g).to(device) for _ in range(2))
    model, process = Precomputed(out).to(device), linear(1000)

    runs = iter(range(1, 10**9))

    def fused(steps, new_schedule=False):
        def run():  # a new schedule: every beta scaled by 1 + 1e-5 k, new float32 coefficients
            scale = 1 + 1e-5 * next(runs)
            proc = linear(1000, 1e-4 * scale, 0.02 * scale) if new_schedule else process
            return pydiffuse.sample(model, x_T=x_T, process=proc, sampler="ddim", steps=steps,
                                    progress=False)
        return run

    t = compare({"fused50": fused(50), "fused100": fused(100),
                 "new50": fused(50, True), "new100": fused(100, True),
                 "eager50": lambda: eager_ddim(model, x_T, process, 50),
                 "eager100": lambda: eager_ddim(model, x_T, process, 100)},
                repeats=repeats, budget_s=0.1)
    return [(f"{name}", t[f"{key}50"] / 50, (t[f"{key}100"] - t[f"{key}50"]) / 50)
            for name, key in (("pydiffuse.sample ddim", "fused"),
                              ("  with a new schedule", "new"), ("eager PyTorch loop", "eager"))]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"uptime: {os.popen('uptime').read().strip()}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {device}, "
          f"backend {pydiffuse.ops.current_backend(device)}, median of {args.repeats}")
    print()
    header = ("op", "shape", "total us", "kernel-only us", "overhead us", "below-autograd us",
              "wrapper us", "torch.add us")
    print(f"{header[0]:24s} {header[1]:10s} " + " ".join(f"{h:>17s}" for h in header[2:]))
    for name, shape, *values in op_rows(device, args.repeats):
        print(f"{name:24s} {shape:10s} " + " ".join(f"{v:17.2f}" for v in values))
    print()
    print(f"DDIM, {'x'.join(map(str, SHAPE))}, a model returning a precomputed tensor")
    print(f"{'loop':24s} {'us / step (50 steps)':>22s} {'marginal us / step':>20s}")
    for name, per_step, marginal in ddim_rows(device, max(5, args.repeats // 3)):
        print(f"{name:24s} {per_step:22.2f} {marginal:20.2f}")
    print(f"uptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()

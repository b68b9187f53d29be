"""Where the ``cpu`` backend's kernels lose to eager PyTorch: the one table of sizes below which
the default dispatch (``_dispatch.select``, no backend forced) runs an op as plain torch ops
instead of its kernel. There, a fixed cost (Python checks, the custom op's autograd wrapper, the
kernel's set-up: about 15-20 us) outweighs what fusing saves on a small tensor.

Measured with ``python -m pydiffuse bench --sweep unet`` (eager, forced kernel and default
dispatch side by side) and an interleaved timing script (candidates alternated round by round,
median of 21-41), float32, 1 and 2 torch threads, on the project's shared 2-core AMD EPYC
(AVX-512) VM, torch 2.13 CPU build. A threshold is the work at which the kernel's time falls
below eager's at both thread counts, rounded up; benchmarks/results/cpu-unet-sweep.md has the
figures.
"""

# op -> (what "work" counts, the least work at which the cpu kernel beats eager PyTorch)
CPU_KERNEL_FROM = {
    "group_norm": ("elements of x, weighted by the eager ops it saves (group_norm_work)", 1 << 17),
    "attention": ("multiply-adds of q kᵀ: B H Nq Nk D", 1 << 24),
}

# group_norm: eager runs 1 op for plain GN, 2 with SiLU, 3 with AdaGN, 4 with both, each with a
# fixed cost of a few us that the one kernel call saves; measured 2026-12-07 after the kernels'
# call went below autograd (1 thread, quiet, medians of 11; /tmp-style A/B of F.group_norm and
# friends vs the forced kernel): plain [2, 256, 8, 8] 15.2 vs 19.3 us, [8, 256, 8, 8] 51.5 vs
# 46.9 (kernel from ~2^17 elements); GN + SiLU [1, 256, 4, 4] 10.1 vs 13.5, [8, 256, 4, 4] 44.0
# vs 38.7 (from ~2^14); AdaGN + SiLU [1, 256, 4, 4] 23.2 vs 14.5 (from below 2^12).
_GROUP_NORM_OP_WEIGHT = {1: 1, 2: 8}  # eager ops -> weight of an element; more ops: 32


def group_norm_work(numel: int, silu: bool, adagn: bool) -> int:
    """group_norm's work in ``CPU_KERNEL_FROM``'s unit: x's elements, weighted by how many eager
    ops (1 + SiLU + 2 AdaGN) the kernel replaces."""
    return numel * _GROUP_NORM_OP_WEIGHT.get(1 + silu + 2 * adagn, 32)


def cpu_kernel_wins(op: str, work: int) -> bool:
    """Whether the cpu kernel of ``op`` beats eager PyTorch at ``work`` (``CPU_KERNEL_FROM``)."""
    return work >= CPU_KERNEL_FROM[op][1]

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
    # plain GN (and affine) against one torch.group_norm: the kernel wins from 2^18 elements;
    # with SiLU or AdaGN eager runs several ops and the kernel wins from 2^17: those count twice
    "group_norm": ("elements of x, twice with SiLU or AdaGN", 1 << 18),
    "attention": ("multiply-adds of q kᵀ: B H Nq Nk D", 1 << 24),
}


def cpu_kernel_wins(op: str, work: int) -> bool:
    """Whether the cpu kernel of ``op`` beats eager PyTorch at ``work`` (``CPU_KERNEL_FROM``)."""
    return work >= CPU_KERNEL_FROM[op][1]

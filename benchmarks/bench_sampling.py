#!/usr/bin/env python3
"""A 50-step DDIM loop on the fused ``sample_step`` vs the same loop in eager torch (steps/s):
a runnable wrapper of ``pydiffuse._demo_loop`` (also part of ``pydiffuse demo``).

    python benchmarks/bench_sampling.py [--steps 50] [--shape 8,4,128,128] [--device cpu|cuda]
                                        [--dtype float32] [--eta 0.0]
"""

import sys

from pydiffuse._demo_loop import ddim_loop_demo, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())

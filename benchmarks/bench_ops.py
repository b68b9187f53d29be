#!/usr/bin/env python3
"""Each fused op of pydiffuse beside PyTorch eager and torch.compile, with GB/s and % of the
measured copy bandwidth: a runnable wrapper of ``pydiffuse.bench`` (also ``pydiffuse bench``).

    python benchmarks/bench_ops.py [--quick] [--dtype float32|bfloat16|float16] [--ops a,b]
                                   [--device cpu|cuda] [--json FILE] [--plot FILE.png]
"""

import sys

from pydiffuse.bench import main, run  # noqa: F401  (run: for `import bench_ops`)

if __name__ == "__main__":
    sys.exit(main())

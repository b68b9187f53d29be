"""The CPU output cache (csrc/cpu/output_pool.h): reused blocks never alias live tensors."""

import subprocess
import sys

import torch

import pydiffuse._C as _C
from pydiffuse.ops import StepCoefs, backend, sample_step

SHAPE = (2, 3, 256, 256)  # 1.5 MiB: cached


def test_live_outputs_never_share_storage_and_reuse_is_correct():
    x = torch.randn(SHAPE)
    _C.release_cached_outputs()
    with backend("cpu"):
        a = sample_step(x, x, StepCoefs(cx=1.0, m0=1.0))
        b = sample_step(x, x, StepCoefs(cx=2.0, m0=1.0))
        assert a.data_ptr() != b.data_ptr()
        freed = a.data_ptr()
        del a
        c = sample_step(x, x, StepCoefs(cx=3.0, m0=1.0))  # takes the freed block
    assert c.data_ptr() == freed
    torch.testing.assert_close(b, 2 * x)
    torch.testing.assert_close(c, 3 * x)
    del b, c
    assert _C.release_cached_outputs() >= 2 * x.numel() * 4


def test_cache_can_be_turned_off():
    code = ("import torch; from pydiffuse.ops import StepCoefs, sample_step; "
            f"x = torch.randn{SHAPE}; "
            "assert torch.equal(sample_step(x, x, StepCoefs(cx=2.0, m0=1.0)), 2 * x); "
            "import pydiffuse._C as C; print(C.release_cached_outputs())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYDIFFUSE_CPU_POOL_MB": "0", "PATH": ""}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"

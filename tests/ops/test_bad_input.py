"""Bad input gets a ValueError or TypeError that names the argument, before any kernel runs."""

import pytest
import torch

from pydiffuse.ops import StepCoefs, langevin_step, lincomb, randn, sample_step

X = torch.zeros(2, 3, 4)
C = StepCoefs(cx=1.0)
HUGE = torch.zeros(1, 1).expand(1, 2**32)  # a 2^32-element sample, without the memory


@pytest.mark.parametrize("call, error, match", [
    (lambda: sample_step(X, torch.zeros(2, 3, 5), C), ValueError, "out has shape"),
    (lambda: sample_step(X.long(), X.long(), C), TypeError, "x must be float32"),
    (lambda: sample_step(X, X.half(), C), TypeError, "out has dtype"),
    (lambda: sample_step(X, X, {"cx": 1.0}), TypeError, "coefs must be a pydiffuse.ops.StepCoefs"),
    (lambda: sample_step(X, X, StepCoefs(cx=torch.ones(3))), ValueError, "coefficient 'cx'"),
    (lambda: sample_step(X, X, StepCoefs(cx="1")), TypeError, "coefficient 'cx'"),
    (lambda: sample_step(X, X, C, out_uncond=X), ValueError, "out_uncond and guidance"),
    (lambda: sample_step(X, X, C, out_uncond=X, guidance=torch.ones(5)), ValueError,
     "coefficient 'guidance'"),
    (lambda: sample_step(X, X, C, clip=torch.ones(2, 2)), ValueError, "coefficient 'clip'"),
    (lambda: sample_step(X, X, C, learned_var=(0.0, 1.0)), ValueError, "out has shape"),
    (lambda: sample_step(X, torch.zeros(2, 6, 4), C, learned_var=1.0), TypeError, "learned_var"),
    (lambda: sample_step(X, X, StepCoefs(s=1.0)), ValueError, "pass noise= or seed="),
    (lambda: sample_step(X, X, C, noise=X, seed=0), ValueError, "noise or seed, not both"),
    (lambda: sample_step(X, X, C, noise=torch.zeros(2, 3)), ValueError, "noise has shape"),
    (lambda: sample_step(X, X, C, seed=[1, 2, 3]), ValueError, "seed has 3 values"),
    (lambda: sample_step(X, X, C, seed=1.5), TypeError, "seed must be an int"),
    (lambda: sample_step(X, X, C, seed=torch.ones(2)), TypeError, "integer dtype"),
    (lambda: sample_step(X, X, C, seed=0, step=-1), TypeError, "step must be"),
    (lambda: sample_step(X, X, C, seed=0, step=1.0), TypeError, "step must be"),
    (lambda: sample_step(torch.tensor(1.0), torch.tensor(1.0), C), ValueError, "batch dimension"),
    (lambda: lincomb([X, X], [1.0]), ValueError, "coefs has 1 entries for 2"),
    (lambda: lincomb([], []), TypeError, "non-empty list"),
    (lambda: lincomb(X, [1.0]), TypeError, "non-empty list"),
    (lambda: lincomb([X, X.half()], [1.0, 1.0]), TypeError, r"tensors\[1\] has dtype"),
    (lambda: lincomb([X, torch.zeros(2, 3)], [1.0, 1.0]), ValueError, r"tensors\[1\] has shape"),
    (lambda: langevin_step(X, X, 0.1), ValueError, "needs noise= or seed="),
    (lambda: langevin_step(X, X[:1], 0.1, seed=0), ValueError, "score has shape"),
    (lambda: langevin_step(X, X, 0.1, seed=0, norm="max"), ValueError, "norm must be one of"),
    (lambda: langevin_step(X, X, torch.ones(4), seed=0), ValueError, "coefficient 'step_size'"),
    (lambda: randn([2, 3], 0, dtype=torch.int32), TypeError, "dtype must be"),
    (lambda: randn([], 0), ValueError, "shape must be"),
    (lambda: randn([2, -1], 0), ValueError, "shape must be"),
    (lambda: randn([2, 3], [1, 2, 3]), ValueError, "seed has 3 values"),
    (lambda: randn([1, 2**32], 0), ValueError, "beyond the noise stream"),
    (lambda: sample_step(HUGE, HUGE, C, seed=0), ValueError, "beyond the noise stream"),
    (lambda: randn([2**32, 0], 0), ValueError, "batch of 2\\^32"),
    # non-finite or out-of-range numbers (issue 13): refused, never a silent NaN
    (lambda: sample_step(X, X, C, clip=float("nan")), ValueError, "clip must be finite"),
    (lambda: sample_step(X, X, C, clip=0.0), ValueError, "clip must be > 0"),
    (lambda: sample_step(X, X, C, clip=-1.0), ValueError, "clip must be > 0"),
    (lambda: sample_step(X, X, C, out_uncond=X, guidance=float("inf")), ValueError,
     "guidance must be finite"),
    (lambda: sample_step(X, X, StepCoefs(cx=float("nan"))), ValueError,
     "coefficient 'cx' must be finite"),
    (lambda: sample_step(X, X, StepCoefs(cx=torch.ones(2), co=float("inf"))), ValueError,
     "coefficient 'co' must be finite"),
    (lambda: lincomb([X, X], [1.0, float("nan")]), ValueError, r"coefs\[1\]' must be finite"),
    (lambda: langevin_step(X, X, float("nan"), seed=0), ValueError, "step_size must be finite"),
    (lambda: langevin_step(X, X, -0.1, seed=0), ValueError, "step_size must be >= 0"),
    (lambda: langevin_step(X, X, 0.1, snr=0.0, seed=0), ValueError, "snr must be > 0"),
    (lambda: langevin_step(X, X, 0.1, snr=float("inf"), seed=0), ValueError,
     "snr must be finite"),
    # the noise stream's 32-bit step counter and 64-bit key: refused, never wrapped
    (lambda: sample_step(X, X, C, seed=0, step=2**32), ValueError, "step must be < 2\\^32"),
    (lambda: langevin_step(X, X, 0.1, seed=0, step=2**32 + 5), ValueError, "step must be < 2"),
    (lambda: randn([2, 3], 0, step=2**40), ValueError, "step must be < 2\\^32"),
    (lambda: randn([2, 3], 0, step=2**64), ValueError, "step must be < 2\\^32"),
    (lambda: randn([2, 3], 2**63), ValueError, "seed must fit in 64 signed bits"),
    (lambda: randn([2, 3], -2**63 - 1), ValueError, "seed must fit in 64 signed bits"),
    (lambda: randn([2, 3], [0, 2**70]), ValueError, "seed must fit in 64 signed bits"),
    (lambda: langevin_step(HUGE, HUGE, 0.1, seed=0), ValueError, "beyond the noise stream"),
])
def test_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_are_refused():
    with pytest.raises(ValueError, match="out is on"):
        sample_step(X.cuda(), X, C)

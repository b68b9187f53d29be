"""Coefficient tables shared by the batch (issue 15): the ops pack Python-float coefficients as a
[rows, 1] tensor expanded over B (stride 0), which every backend reads in place. The shared
table and the same table materialized per sample must give the same bits, at shapes of many
short samples and of samples longer than a kernel block (tests/ops/test_<op>.py compare the
element-scheduled kernels with the reference)."""

import pytest
import torch

from pydiffuse.ops import StepCoefs, lincomb, sample_step
from pydiffuse.ops._packing import pack_rows
from tests.ops.helpers import make, needs_triton, on_triton_device, triton_ops

SHAPES = ((1031, 2), (2053,), (129, 16), (3, 2049), (7, 3, 2, 2))
STEP_ROWS = (1.25, -0.75, 0.6, -0.8, 0.9, 0.3, 0.05, 0.1, 2.0, 1.5, -3.0, -1.0)


def _shared(values, batch):
    return torch.tensor(values)[:, None].expand(len(values), batch)


def _cases(shape):
    """(op name, args, index of the table in args), the table shared by the batch."""
    gen = torch.Generator().manual_seed(sum(shape))
    x, out, z = (make(shape, torch.float32, "cpu", generator=gen) for _ in range(3))
    batch, seeds = shape[0], torch.tensor([7])
    step, lin, lan = (_shared(v, batch) for v in (STEP_ROWS, (0.5, -0.25, 1.5), (0.01, 0.16)))
    for noise in ((z, None, 0), (None, seeds, 3)):
        for clip in (False, True):
            yield "sample_step", (x, out, x, step, *noise, clip, False, True), 3
    yield "lincomb", ([x, out, z], lin), 1
    for adaptive, per_sample_norm in ((False, False), (True, True), (True, False)):
        yield "langevin_step", (x, out, lan, adaptive, per_sample_norm, None, seeds, 1, True), 2


def _assert_same_bits(ops, shape, move=lambda args: args):
    for name, args, at in _cases(shape):
        assert args[at].stride(1) == 0
        materialized = args[:at] + (args[at].contiguous(),) + args[at + 1:]
        op = getattr(ops, name)
        shared_result, materialized_result = op(*move(args)), op(*move(materialized))
        if name == "lincomb":
            shared_result, materialized_result = (shared_result,), (materialized_result,)
        for a, b in zip(shared_result, materialized_result):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpu_reads_a_shared_table_in_place(shape):
    _assert_same_bits(torch.ops.pydiffuse, shape)


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_triton_reads_a_shared_table_in_place(shape):
    _assert_same_bits(triton_ops(), shape, on_triton_device)


def test_numbers_pack_as_one_shared_row():
    """Python floats pack to one row with stride 0 over the batch; a per-sample tensor to one
    value per sample; either way the op's result is the same."""
    cpu = torch.device("cpu")
    assert pack_rows([0.5, -2.0], "coefs", 5, cpu).stride(1) == 0
    table = pack_rows([torch.full((5,), 0.5), -2.0], "coefs", 5, cpu)
    assert table.is_contiguous() and table.shape == (2, 5)
    x = torch.randn(5, 3)
    torch.testing.assert_close(lincomb([x, x], [0.5, -2.0]), -1.5 * x)
    torch.testing.assert_close(lincomb([x, x], [torch.full((5,), 0.5), -2.0]), -1.5 * x)
    torch.testing.assert_close(sample_step(x, x, StepCoefs(cx=1.0, co=1.0, m0=1.0)), 2 * x)

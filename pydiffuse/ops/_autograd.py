"""Autograd of the fused ops on the compiled backends (the ``pydiffuse::`` ops of C++ / CUDA and
the ``pydiffuse_triton::`` ops): one registry and the pieces the formulas share.

Each op module states its op's gradient beside the op (``@formula("sample_step")`` on a function
``namespace -> (backward, setup_context)``); ``_dispatch`` calls ``register_namespace`` once a
backend's ops exist (after loading ``pydiffuse._C``, or after importing the Triton kernels), and
every formula, stated before or after, is registered for that namespace with
``torch.library.register_autograd``. A formula's backward runs its own namespace's kernels.

Where an op is linear in a tensor input, that gradient is itself a fused op, the namespace's own
``lincomb`` (``combine``). Everything else is the ``reference`` op's own gradient, recomputed
(``reference_grads``: the op re-run in pure torch under enable_grad, then torch.autograd.grad).
Noise drawn from the stream (``seeds``) is a constant: it has no gradient; the recomputation takes
it from the backend's own ``randn`` (``stream_noise``: the same stream, far cheaper than the
reference's Philox in torch ops, and quick to compile).
"""

import types
from collections.abc import Callable

import torch

# op name -> make(namespace) -> (backward, setup_context)
_FORMULAS: dict[str, Callable] = {}
_NAMESPACES: list[str] = []  # the namespaces whose ops exist, in the order they were loaded


def formula(op: str):
    """Decorator: ``make(namespace) -> (backward, setup_context)`` is the autograd formula of
    ``{namespace}::{op}`` for every namespace, loaded already or later."""

    def add(make):
        _FORMULAS[op] = make
        for namespace in _NAMESPACES:
            _register(namespace, op, make)
        return make

    return add


def register_namespace(namespace: str) -> None:
    """Registers every formula for ``namespace`` (``"pydiffuse"`` or ``"pydiffuse_triton"``),
    whose ops have just been loaded."""
    _NAMESPACES.append(namespace)
    for op, make in _FORMULAS.items():
        _register(namespace, op, make)


def _register(namespace: str, op: str, make) -> None:
    backward, setup_context = make(namespace)
    torch.library.register_autograd(f"{namespace}::{op}", backward, setup_context=setup_context)


def kernels(namespace: str) -> types.SimpleNamespace:
    """The namespace's own ``lincomb`` and ``randn`` (the backward's fused pieces)."""
    ops = getattr(torch.ops, namespace)
    return types.SimpleNamespace(lincomb=ops.lincomb.default, randn=ops.randn.default)


def combine(lincomb_op, g, g_second, k, direct, via_second):
    """``direct g + via_second (k g + g_second)`` as one fused lincomb; ``direct``, ``via_second``
    and ``k`` are [B] rows (or floats); g or g_second None (no gradient) drops out."""
    terms, rows = [], []
    if g is not None:
        terms.append(g)
        rows.append(direct + via_second * k)
    if g_second is not None:
        terms.append(g_second)
        rows.append(via_second)
    batch, device = terms[0].shape[0], terms[0].device
    rows = [torch.as_tensor(r, dtype=torch.float32, device=device).expand(batch) for r in rows]
    return lincomb_op(terms, torch.stack(rows))


def stream_noise(randn_op, x, noise, seeds, step):
    """(noise, seeds) for the reference recomputation: the stream's z as a tensor when drawn."""
    if seeds is None:
        return noise, None
    return randn_op(seeds, list(x.shape), step, torch.float32), None


def reference_grads(fn, args, wanted, grads):
    """{i: gradient of args[i]} for i in ``wanted``, of the reference op ``fn(*args)`` given the
    gradients of its outputs (None: none): exactly the reference backend's gradient."""
    keep = torch.is_grad_enabled()  # create_graph: the recomputation stays differentiable

    def leaf(i, a):
        if keep:
            return a
        if isinstance(a, list):  # lincomb's tensors
            return [t.detach() for t in a]
        return a.detach().requires_grad_(i in wanted) if isinstance(a, torch.Tensor) else a

    with torch.enable_grad():
        args = [leaf(i, a) for i, a in enumerate(args)]
        outs = fn(*args)
    outs = (outs,) if isinstance(outs, torch.Tensor) else outs
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    if not pairs:
        return {}
    found = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in wanted],
                                [g for _, g in pairs], allow_unused=True, create_graph=keep)
    return dict(zip(wanted, found))

"""Triton kernels of the fused ops, registered as ``torch.ops.pydiffuse_triton.<op>`` on import.

Imported as ``pydiffuse.triton_kernels`` (pydiffuse/ops/_dispatch.py); on CPU tensors they run
only under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is imported).
"""

from . import (  # noqa: F401 (register the ops)
    attention, group_norm, langevin_step, lincomb, randn, sample_step)

"""Triton kernels of the fused ops, registered as ``torch.ops.pydiffuse_triton.<op>`` on import:
one module per op (``<op>.py``: its kernels and their ``triton_op`` launchers) and the shared
helpers (``common.py``, ``philox.py``), every module imported here, so a new op's module needs no
line in this file.

Imported as ``pydiffuse.triton_kernels`` by ``pydiffuse/ops/_dispatch.py``, which then registers
the ops' autograd formulas; on CPU tensors the kernels run only under Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported). These modules import nothing from
``pydiffuse`` but the packed-coefficient layout ``pydiffuse.ops._packing`` (a leaf module).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

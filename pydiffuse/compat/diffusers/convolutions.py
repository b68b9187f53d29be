"""``PackedConv2d``: a torch ``Conv2d`` whose inference on the CPU runs oneDNN's convolution on
weights reordered once into its blocked layout (``mkldnn::_reorder_convolution_weight``, what
``torch.compile``'s weight freezing does), on channels_last activations, with an optional
residual added in the convolution's epilogue (``_convolution_pointwise.binary``, "add").

The reordered weight is a cache outside the module (the ``state_dict`` is unchanged), rebuilt
when the weight changes (its version counter or storage) or the input size does. Anything else
(a gradient to track, CUDA, another dtype, padding modes, ``torch.compile`` tracing) runs torch's
own convolution."""

import weakref

import torch
from torch import nn

_PACKED: "weakref.WeakKeyDictionary[nn.Conv2d, tuple]" = weakref.WeakKeyDictionary()


def conv_unfusable(conv: nn.Conv2d) -> str:
    """Why ``PackedConv2d`` cannot run ``conv``, or ''."""
    if type(conv) is not nn.Conv2d:
        return f"a {type(conv).__name__}, not a torch Conv2d"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"padding {conv.padding!r} ({conv.padding_mode})"
    if not torch.backends.mkldnn.is_available():
        return "torch is built without oneDNN (mkldnn)"
    return ""


class PackedConv2d(nn.Conv2d):
    """y = conv2d(x, weight, bias) (+ residual), on a prepacked weight where it can."""

    def forward(self, x, residual=None):
        w = self.weight
        if (x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32
                or torch.compiler.is_compiling()
                or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            y = super().forward(x)
            return y if residual is None else y + residual
        x = x.contiguous(memory_format=torch.channels_last)
        key = (w.data_ptr(), w._version, tuple(x.shape))
        cached = _PACKED.get(self)
        if cached is None or cached[0] != key:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                w.detach(), list(self.padding), list(self.stride), list(self.dilation),
                self.groups, list(x.shape))
            cached = _PACKED[self] = (key, packed)
        args = (cached[1], self.bias, list(self.padding), list(self.stride), list(self.dilation),
                self.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(x, *args, "none", [], "")
        residual = residual.contiguous(memory_format=torch.channels_last)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, *args, "add", None,
                                                              None, [], None)

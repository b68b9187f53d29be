"""``PackedConv2d``: a torch ``Conv2d`` whose inference on the CPU runs oneDNN's convolution on
weights reordered once into its blocked layout (``mkldnn::_reorder_convolution_weight``, what
``torch.compile``'s weight freezing does), on channels_last activations, with an optional
residual added in the convolution's epilogue (``_convolution_pointwise.binary``, "add").

The call is the custom op ``pydiffuse_compat::conv2d_packed`` (opaque to ``torch.compile``,
which then keeps it). The reordered weight is cached per weight tensor outside the module (the
``state_dict`` is unchanged) and rebuilt when the weight changes (its storage or version
counter) or the input size does. Anything else (a gradient to track, CUDA, another dtype) runs
torch's own convolution."""

import weakref

import torch
from torch import nn

# id(weight) -> (weakref to the weight, (storage, version, input size), reordered weight); an
# entry leaves with its weight
_PACKED: dict[int, tuple] = {}


def conv_unfusable(conv: nn.Conv2d) -> str:
    """Why ``PackedConv2d`` cannot run ``conv``, or ''."""
    if type(conv) is not nn.Conv2d:
        return f"a {type(conv).__name__}, not a torch Conv2d"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"padding {conv.padding!r} ({conv.padding_mode})"
    if not torch.backends.mkldnn.is_available():
        return "torch is built without oneDNN (mkldnn)"
    return ""


@torch.library.custom_op("pydiffuse_compat::conv2d_packed", mutates_args=())
def conv2d_packed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  residual: torch.Tensor | None, padding: list[int], stride: list[int],
                  dilation: list[int], groups: int) -> torch.Tensor:
    """conv2d(x, weight, bias) (+ residual) on the reordered weight, channels_last out."""
    x = x.contiguous(memory_format=torch.channels_last)
    key = (weight.data_ptr(), weight._version, tuple(x.shape))
    cached = _PACKED.get(id(weight))
    if cached is None or cached[0]() is not weight or cached[1] != key:
        packed = torch.ops.mkldnn._reorder_convolution_weight(weight, padding, stride, dilation,
                                                              groups, list(x.shape))
        ref = weakref.ref(weight, lambda _, i=id(weight): _PACKED.pop(i, None))
        cached = _PACKED[id(weight)] = (ref, key, packed)
    args = (cached[2], bias, padding, stride, dilation, groups)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(x, *args, "none", [], "")
    residual = residual.contiguous(memory_format=torch.channels_last)
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, *args, "add", None, None,
                                                          [], None)


@conv2d_packed.register_fake
def _conv2d_packed_fake(x, weight, bias, residual, padding, stride, dilation, groups):
    size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, p, s, d in
            zip(x.shape[2:], weight.shape[2:], padding, stride, dilation)]
    out = x.new_empty((x.shape[0], weight.shape[0], *size))
    return out.contiguous(memory_format=torch.channels_last)


class PackedConv2d(nn.Conv2d):
    """y = conv2d(x, weight, bias) (+ residual), on a prepacked weight where it can."""

    def forward(self, x, residual=None):
        w = self.weight
        if (x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32
                or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            y = super().forward(x)
            return y if residual is None else y + residual
        return conv2d_packed(x, w, self.bias, residual, list(self.padding), list(self.stride),
                             list(self.dilation), self.groups)

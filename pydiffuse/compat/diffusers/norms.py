"""GroupNorm + SiLU of diffusers' UNets as one ``pydiffuse.ops.group_norm`` pass. ``fuse`` swaps
the classes of the modules in place (their parameters, ``state_dict`` and names unchanged;
``unfuse`` swaps them back); the new classes run diffusers' own forward where the chosen backend
cannot run the input (``pydiffuse.ops.unsupported_reason``: float64, say)."""

from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from ...ops import group_norm, unsupported_reason
from .convolutions import PackedConv2d


def norm_silu(norm: nn.GroupNorm, x, scale=None, shift=None):
    """SiLU((GN(x) * weight + bias) * (1 + scale) + shift) of a torch GroupNorm, one pass."""
    return group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps, scale=scale,
                      shift=shift, act="silu")


class FusedResnetBlock2D(ResnetBlock2D):
    """diffusers' ``ResnetBlock2D`` (SiLU non-linearity) with each GN + SiLU one fused pass,
    e = SiLU(temb) (or temb with ``skip_time_act``):

        h = conv1(SiLU(GN1(x)))                          # x and h resampled before conv1 (up/down)
        h = SiLU(GN2(h + proj(e)))                       # time_embedding_norm "default"
        h = SiLU(GN2(h) (1 + s) + b), (s, b) = proj(e)   # "scale_shift": the op's AdaGN
        out = (shortcut(x) + conv2(dropout(h))) / output_scale_factor

    (the residual added in conv2's epilogue when it is a ``PackedConv2d``).
    """

    def forward(self, input_tensor, temb, *args, **kwargs):
        if (args or kwargs or (temb is None) != (self.time_emb_proj is None)
                or unsupported_reason(input_tensor.device, input_tensor.dtype)):
            return super().forward(input_tensor, temb, *args, **kwargs)  # as diffusers runs it
        x = input_tensor
        h = norm_silu(self.norm1, x)
        if self.upsample is not None:
            if h.shape[0] >= 64:  # diffusers' workaround of upsample_nearest_nhwc (issue 984)
                x, h = x.contiguous(), h.contiguous()
            x, h = self.upsample(x), self.upsample(h)
        elif self.downsample is not None:
            x, h = self.downsample(x), self.downsample(h)
        h = self.conv1(h)
        if self.time_emb_proj is not None:
            temb = self.time_emb_proj(temb if self.skip_time_act else self.nonlinearity(temb))
        if self.time_embedding_norm == "scale_shift":
            scale, shift = temb.chunk(2, dim=1)
            h = norm_silu(self.norm2, h, scale, shift)
        else:
            h = norm_silu(self.norm2, h if temb is None else h + temb[:, :, None, None])
        h = self.dropout(h)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x.contiguous() if self.training else x)
        out = self.conv2(h, residual=x) if isinstance(self.conv2, PackedConv2d) else \
            x + self.conv2(h)
        return out if self.output_scale_factor == 1 else out / self.output_scale_factor


def resnet_unfusable(block: ResnetBlock2D) -> str:
    """Why ``FusedResnetBlock2D`` cannot run ``block``, or ''."""
    if type(block) is not ResnetBlock2D:
        return f"{type(block).__name__} is not diffusers' ResnetBlock2D"
    for name in ("norm1", "norm2"):
        if type(getattr(block, name)) is not nn.GroupNorm:
            return f"{name} is a {type(getattr(block, name)).__name__}, not a torch GroupNorm"
    if type(block.nonlinearity) is not nn.SiLU:
        return f"its non-linearity is {type(block.nonlinearity).__name__}, not SiLU"
    if block.time_embedding_norm not in ("default", "scale_shift"):
        return f"time_embedding_norm {block.time_embedding_norm!r}"
    if block.time_embedding_norm == "scale_shift" and block.time_emb_proj is None:
        return "time_embedding_norm 'scale_shift' without a time embedding"
    return ""


class FusedGroupNormSiLU(nn.GroupNorm):
    """A torch GroupNorm that also applies the SiLU after it (the UNets' ``conv_norm_out``, whose
    ``conv_act`` becomes a ``FoldedSiLU``), in one pass."""

    def forward(self, x):
        if unsupported_reason(x.device, x.dtype):
            return nn.functional.silu(super().forward(x))
        return norm_silu(self, x)


class FoldedSiLU(nn.SiLU):
    """The identity: a SiLU applied by the ``FusedGroupNormSiLU`` before it."""

    def forward(self, x):
        return x

    def extra_repr(self) -> str:
        return "folded into the norm before it"

"""``SelfAttention2d``: the self-attention block of diffusion UNets (DDPM, ADM) on the fused
``attention`` op and the fused ``GroupNorm``."""

import torch
from torch import nn

from ..ops.attention import attention
from .norm import GroupNorm


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H·W positions of a feature map, with a residual:

        q, k, v = split(Conv1x1(GN(x)))          # 3C channels: q, then k, then v
        y = x + Conv1x1(attention(q, k, v))      # per head, scale 1/sqrt(head_channels)

    The block of DDPM (Ho et al. 2020) and ADM's ``AttentionBlock`` (Dhariwal & Nichol 2021) with
    its new attention order (q, k, v each C channels, split into heads). The output projection
    starts at zero, as in ADM, so a fresh block is the identity.

    Args:
        channels: C.
        num_heads: heads; or ``head_channels`` (channels per head): give exactly one.
        num_groups: groups of the norm (a divisor of C).
        eps: the norm's eps.
    """

    def __init__(self, channels: int, num_heads=None, head_channels=None, num_groups: int = 32,
                 eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        if (num_heads is None) == (head_channels is None):
            raise ValueError("give exactly one of num_heads and head_channels")
        if num_heads is not None:
            if num_heads < 1 or channels % num_heads != 0:
                raise ValueError(f"channels ({channels}) must be divisible by num_heads "
                                 f"({num_heads})")
            head_channels = channels // num_heads
        else:
            if head_channels < 1 or channels % head_channels != 0:
                raise ValueError(f"channels ({channels}) must be divisible by head_channels "
                                 f"({head_channels})")
            num_heads = channels // head_channels
        self.channels, self.num_heads, self.head_channels = channels, num_heads, head_channels
        factory = dict(device=device, dtype=dtype)
        self.norm = GroupNorm(num_groups, channels, eps=eps, **factory)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, **factory)
        self.proj = nn.Conv2d(channels, channels, 1, **factory)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> [B, C, H, W]."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must be [B, {self.channels}, H, W], got {list(x.shape)}")
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, self.head_channels, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each [B, heads, HW, head_channels]
        out = attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))

    def extra_repr(self) -> str:
        return f"{self.channels}, num_heads={self.num_heads}"

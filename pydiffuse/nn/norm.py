"""Norm layers of diffusion UNets on the fused ``group_norm``: ``GroupNorm`` (a drop-in for
``torch.nn.GroupNorm``, with an optional fused SiLU) and ``AdaGroupNorm`` (ADM's scale-shift
norm)."""

import torch
from torch import nn

from ..ops.group_norm import ACTIVATIONS, group_norm


def _check_layer(num_groups: int, num_channels: int, act) -> None:
    if num_groups < 1 or num_channels % num_groups != 0:
        raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups "
                         f"({num_groups})")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be None or 'silu', got {act!r}")


class GroupNorm(nn.Module):
    """Group norm (Wu & He 2018), fused with its affine and an optional SiLU:
    y = act(GN(x) * weight + bias).

    Same parameters and state dict as ``torch.nn.GroupNorm`` (``weight``, ``bias`` [C]), so a
    torch GroupNorm's state dict loads as is; ``act="silu"`` folds the SiLU that follows every
    norm of a diffusion UNet into the same pass. ``forward(x, scale=None, shift=None)`` also takes
    the AdaGN modulation (see ``pydiffuse.ops.group_norm``).

    Args:
        num_groups: G, a divisor of num_channels.
        num_channels: C.
        eps: added to the variance.
        affine: learn ``weight`` (ones) and ``bias`` (zeros); else None.
        act: None or "silu".
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 act=None, device=None, dtype=None):
        super().__init__()
        _check_layer(num_groups, num_channels, act)
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.affine, self.act = affine, act
        if affine:
            self.weight = nn.Parameter(torch.empty(num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.empty(num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, scale=None, shift=None) -> torch.Tensor:
        """x [B, C, *spatial]; scale, shift [B, C] or None. Returns y, x's shape and dtype."""
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, scale=scale,
                          shift=shift, act=self.act)

    def extra_repr(self) -> str:
        act = f", act={self.act!r}" if self.act else ""
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, "
                f"affine={self.affine}{act}")


class AdaGroupNorm(nn.Module):
    """ADM's scale-shift norm (AdaGN, Dhariwal & Nichol 2021, "use_scale_shift_norm"):

        scale, shift = Linear(emb).chunk(2, dim=1)
        y = act((GN(x) * weight + bias) * (1 + scale) + shift)

    in one pass over x. ``emb`` is the (already activated) timestep / class embedding: ADM puts a
    SiLU before this Linear. The norm's own affine (``weight``, ``bias``) is that of ADM's
    ``out_norm``; ``proj`` is its ``emb_layers`` Linear.

    Args:
        num_groups: G, a divisor of num_channels.
        num_channels: C.
        emb_dim: the embedding's width E.
        eps: added to the variance.
        act: None or "silu" (ADM's out_layers start with a SiLU).
    """

    def __init__(self, num_groups: int, num_channels: int, emb_dim: int, eps: float = 1e-5,
                 act=None, device=None, dtype=None):
        super().__init__()
        _check_layer(num_groups, num_channels, act)
        self.num_groups, self.num_channels, self.eps, self.act = num_groups, num_channels, eps, act
        self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        self.proj = nn.Linear(emb_dim, 2 * num_channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x [B, C, *spatial], emb [B, E]. Returns y, x's shape and dtype."""
        out = self.proj(emb)
        if out.dtype != x.dtype:  # autocast: a half Linear output beside float32 x
            out = out.float()
        scale, shift = out.chunk(2, dim=1)
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, scale=scale,
                          shift=shift, act=self.act)

    def extra_repr(self) -> str:
        act = f", act={self.act!r}" if self.act else ""
        return (f"{self.num_groups}, {self.num_channels}, emb_dim={self.proj.in_features}, "
                f"eps={self.eps}{act}")

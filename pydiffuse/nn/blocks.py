"""Building blocks of the diffusion UNets (DDPM, ADM) on the fused norms and attention: the time
and class embedding, residual blocks (plain, AdaGN scale-shift, BigGAN up/down), plain up/down
sampling and the attention block. Convolutions and linears are torch's; every norm is the fused
``GroupNorm`` / ``AdaGroupNorm`` (with its SiLU folded in) and attention is ``SelfAttention2d``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SelfAttention2d
from .norm import AdaGroupNorm, GroupNorm

TIME_INPUTS = ("index", "unit", "sigma", None)
OUTPUT_SCALES = (None, "inv_sigma")
# "unit": t in [0, 1] is embedded as 999 t (score_sde's DDPM models); "sigma": as 100 ln(sigma),
# which spreads the NCSN ladders (sigma in [0.01, 50]) over a range like DDPM's 0..999 steps.
UNIT_SCALE, SIGMA_SCALE = 999.0, 100.0


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0,
                       freq_shift: float = 0.0, sin_first: bool = False) -> torch.Tensor:
    """The sinusoidal embedding of the Transformer (Vaswani et al. 2017) used by DDPM and ADM:
    [cos(t f_k), sin(t f_k)] with f_k = max_period^(-k / (dim / 2 - freq_shift)),
    k = 0 .. dim/2 - 1 (ADM's order; [sin, cos] with ``sin_first``, the DDPM TensorFlow code's,
    whose freq_shift is 1: diffusers' ``flip_sin_to_cos=False, freq_shift=1``; a zero column pads
    an odd dim).

    Args:
        t: [B] (float) positions.
        dim: the embedding's width.
        freq_shift: subtracted from dim / 2 in the exponent.
        sin_first: the sines first.

    Returns:
        [B, dim] float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / (half - freq_shift)
                      * torch.arange(half, dtype=torch.float32, device=t.device))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)] if sin_first
                    else [torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class ConditionEmbedding(nn.Module):
    """The conditioning vector of every residual block: the time embedding
    MLP(sinusoid(t')) = Linear(SiLU(Linear(sinusoid(t')))) (Ho et al. 2020, Appendix B) plus, for a
    class-conditional model, a learned class embedding (Dhariwal & Nichol 2021, §3). Index
    ``num_classes`` is the null label of classifier-free guidance (Ho & Salimans 2022).

    ``time_input`` says what t is and how it is embedded: "index" (a discrete step, t' = t),
    "unit" (t in [0, 1] of a score SDE, t' = 999 t), "sigma" (a noise level, t' = 100 ln sigma)
    or None (no time input: NCSNv2's unconditional network, Song & Ermon 2020).

    Args:
        channels: width of the sinusoid (the UNet's base channels).
        emb_dim: width of the output.
        time_input: "index", "unit", "sigma" or None.
        num_classes: classes of the conditioning labels (plus the null label), or None.
        freq_shift, sin_first: of the sinusoid (``timestep_embedding``).

    ``forward(t, y, batch)`` returns SiLU(time embedding + class embedding) [B, emb_dim] (every
    block's embedding Linear starts with this SiLU in ADM), or None when there is neither.
    """

    def __init__(self, channels: int, emb_dim: int, time_input="index", num_classes=None,
                 freq_shift: float = 0.0, sin_first: bool = False):
        super().__init__()
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {TIME_INPUTS}, got {time_input!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        self.channels, self.time_input, self.num_classes = channels, time_input, num_classes
        self.freq_shift, self.sin_first = freq_shift, sin_first
        self.time_mlp = None if time_input is None else nn.Sequential(
            nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = None if num_classes is None else nn.Embedding(num_classes + 1, emb_dim)
        has_emb = self.time_mlp is not None or self.label_emb is not None
        self.emb_dim = emb_dim if has_emb else None

    @property
    def null_label(self):
        """The label of the unconditional model (classifier-free guidance), or None."""
        return self.num_classes

    def forward(self, t, y, batch: int):
        emb = None
        if self.time_mlp is not None:
            t = t.float()
            if self.time_input == "unit":
                t = UNIT_SCALE * t
            elif self.time_input == "sigma":
                t = SIGMA_SCALE * torch.log(t)
            emb = self.time_mlp(timestep_embedding(t, self.channels, freq_shift=self.freq_shift,
                                                   sin_first=self.sin_first))
        if y is None and self.label_emb is not None:
            raise ValueError(f"this model is class-conditional: pass y, [B] long labels in "
                             f"[0, {self.num_classes}] ({self.num_classes} = the null label)")
        if y is not None:
            if self.label_emb is None:
                raise ValueError("y given to a model without class conditioning "
                                 "(num_classes=None)")
            if (not isinstance(y, torch.Tensor) or y.dtype != torch.long
                    or tuple(y.shape) != (batch,)):
                raise ValueError(f"y must be a [B] = [{batch}] long tensor of labels, got "
                                 f"{_describe(y)}")
            label = self.label_emb(y)
            emb = label if emb is None else emb + label
        return None if emb is None else F.silu(emb)


def check_output_scale(output_scale, time_input, learned_sigma: bool) -> None:
    """ValueError unless ``output_scale`` is None, or "inv_sigma" with t = sigma (``time_input``
    "sigma" or None) and a plain output (no learned sigma)."""
    if output_scale not in OUTPUT_SCALES:
        raise ValueError(f"output_scale must be one of {OUTPUT_SCALES}, got {output_scale!r}")
    if output_scale == "inv_sigma" and (time_input not in ("sigma", None) or learned_sigma):
        raise ValueError("output_scale='inv_sigma' divides by t = sigma: it needs "
                         "time_input 'sigma' or None and no learned_sigma")


def check_time(t, batch: int, device) -> torch.Tensor:
    """t as a [B] tensor: a [B] tensor as is; a 0-d tensor or a number broadcast."""
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        return t.expand(batch)
    if tuple(t.shape) != (batch,):
        raise ValueError(f"t must be [B] = [{batch}] (or a scalar), got {_describe(t)}")
    return t


def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"a {v.dtype} tensor of shape {list(v.shape)}"
    return type(v).__name__


class Downsample(nn.Module):
    """Halves H and W: a 3x3 convolution of stride 2 (``use_conv``; ``padding`` 1, or 0: the DDPM
    TensorFlow code's, one zero row and column after the input), else 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool = True, padding: int = 1):
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"padding must be 0 or 1, got {padding!r}")
        self.conv = (nn.Conv2d(channels, channels, 3, stride=2, padding=padding) if use_conv
                     else None)

    def forward(self, x):
        if self.conv is None:
            return F.avg_pool2d(x, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.conv.padding == (0, 0) else x)


class Upsample(nn.Module):
    """Doubles H and W: nearest-neighbour upsampling, then a 3x3 convolution (``use_conv``)."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """The residual block of DDPM (Ho et al. 2020, Appendix B) and ADM (Dhariwal & Nichol 2021,
    §3), with SiLU(emb) = e:

        h = Conv3x3(SiLU(GN(x)))                        # resampled before the conv (up/down)
        h = SiLU(GN(h + Linear(e)))                     # DDPM's additive embedding, or
        h = SiLU(GN(h) (1 + s) + b), (s, b) = Linear(e)  # AdaGN (scale_shift)
        out = skip(x) + Conv3x3(Dropout(h))             # the last conv starts at zero

    skip is the identity, or a 1x1 convolution when the width changes. ``up``/``down`` make it
    BigGAN's resampling block (nearest-neighbour / average pooling of both h and x); with
    ``skip_scale`` the output is divided by sqrt(2) (BigGAN, NCSN++). Without an embedding
    (``emb_dim=None``) the embedding terms are left out. Every GN(+SiLU) is one fused pass.

    Args:
        in_channels, out_channels: widths.
        emb_dim: width of the conditioning vector, or None.
        dropout: before the last convolution.
        scale_shift: AdaGN instead of the additive embedding.
        up, down: BigGAN resampling (at most one).
        num_groups: groups of every GN.
        skip_scale: divide the output by sqrt(2).
        eps: of every GN.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim=None, dropout: float = 0.0,
                 scale_shift: bool = False, up: bool = False, down: bool = False,
                 num_groups: int = 32, skip_scale: bool = False, eps: float = 1e-5):
        super().__init__()
        if up and down:
            raise ValueError("a ResBlock samples up or down, not both")
        self.in_norm = GroupNorm(num_groups, in_channels, eps=eps, act="silu")
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.resample = (Upsample(in_channels, use_conv=False) if up else
                         Downsample(in_channels, use_conv=False) if down else None)
        self.emb_proj = None
        if emb_dim is not None and scale_shift:
            self.out_norm = AdaGroupNorm(num_groups, out_channels, emb_dim, eps=eps, act="silu")
        else:
            self.out_norm = GroupNorm(num_groups, out_channels, eps=eps, act="silu")
            if emb_dim is not None:
                self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))
        self.skip_scale = skip_scale

    def forward(self, x: torch.Tensor, emb=None) -> torch.Tensor:
        """x [B, in_channels, H, W], emb [B, emb_dim] (SiLU applied) or None."""
        h = self.in_norm(x)
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = self.in_conv(h)
        if isinstance(self.out_norm, AdaGroupNorm):
            h = self.out_norm(h, emb)
        else:
            if self.emb_proj is not None:
                h = h + self.emb_proj(emb)[:, :, None, None].to(h.dtype)
            h = self.out_norm(h)
        out = self.skip(x) + self.out_conv(self.dropout(h))
        return out * (1 / math.sqrt(2)) if self.skip_scale else out


class AttentionBlock(SelfAttention2d):
    """``SelfAttention2d`` (x + Conv1x1(attention(GN(x)))) with an optional 1/sqrt(2) on its
    output (``skip_scale``, as NCSN++'s rescaled residuals)."""

    def __init__(self, channels: int, num_heads=None, head_channels=None, num_groups: int = 32,
                 skip_scale: bool = False, eps: float = 1e-5):
        super().__init__(channels, num_heads=num_heads, head_channels=head_channels,
                         num_groups=num_groups, eps=eps)
        self.skip_scale = skip_scale

    def forward(self, x: torch.Tensor, emb=None) -> torch.Tensor:
        out = super().forward(x)
        return out * (1 / math.sqrt(2)) if self.skip_scale else out


class EmbedSequential(nn.Sequential):
    """Layers run in turn; ResBlocks and attention blocks also receive the embedding."""

    def forward(self, x, emb=None):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (ResBlock, AttentionBlock)) else layer(x)
        return x


def zero_init(module: nn.Module) -> nn.Module:
    """Zeroes a module's parameters (DDPM's init_scale=0, ADM's zero_module): a fresh residual
    branch or output layer then contributes nothing."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module

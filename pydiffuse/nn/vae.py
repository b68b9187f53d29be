"""A small convolutional VAE for LSGM (Vahdat, Kreis & Kautz 2021; MATH.md section 8): a Gaussian
encoder q(z_0 | x) = N(mu, diag sigma^2) and a decoder p(x | z_0) with a discretized logistic
likelihood over the data's quantization levels (PixelCNN++, Salimans et al. 2017)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

# a finite stand-in for +-inf in the edge bins: logsigmoid(BIG) == 0 and expm1(-BIG) == -1 in
# float32, with finite gradients
_BIG = 1e4


def discretized_logistic_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                             levels: int = 17, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """-log P(x) of data quantized to ``levels`` evenly spaced values in [lo, hi] under a
    logistic(mean, scale) discretized into bins of width h = (hi - lo) / (levels - 1) around each
    level, the two edge bins reaching to -inf and +inf (Salimans et al. 2017):

        P(x) = sigmoid((x + h/2 - mean) / s) - sigmoid((x - h/2 - mean) / s),

    computed stably as log P = logsigmoid(a) + logsigmoid(-b) + log(1 - exp(b - a)).

    Args:
        x: data [B, ...] on the grid lo + k h (e.g. the digits: 17 levels in [-1, 1]).
        mean, log_scale: [B, ...] of x's shape (log_scale is clamped below at -7).
        levels, lo, hi: the quantization grid.

    Returns:
        [B] -log P(x) in nats, summed over the non-batch dimensions.
    """
    if mean.shape != x.shape or log_scale.shape != x.shape:
        raise ValueError(f"mean {list(mean.shape)} and log_scale {list(log_scale.shape)} must "
                         f"have x's shape {list(x.shape)}")
    if levels < 2 or not lo < hi:
        raise ValueError(f"need levels >= 2 and lo < hi, got {levels}, {lo}, {hi}")
    half = 0.5 * (hi - lo) / (levels - 1)
    inv_s = torch.exp(-log_scale.clamp(min=-7.0))
    a = (x + half - mean) * inv_s
    b = (x - half - mean) * inv_s
    a = torch.where(x > hi - half, torch.full_like(a, _BIG), a)
    b = torch.where(x < lo + half, torch.full_like(b, -_BIG), b)
    logp = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(b - a))
    return -logp.flatten(1).sum(1)


class ConvVAE(nn.Module):
    """Encoder q(z_0 | x) = N(mu, diag sigma^2) and decoder p(x | z_0) (a discretized logistic
    per pixel, mean and log-scale from the network) for small images [C, H, W] (H, W even).

    Encoder: conv 3x3 (ch) - SiLU - conv 3x3 stride 2 (2 ch) - SiLU - conv 3x3 - SiLU, then a
    head to (mu, log sigma): a linear layer for a flat latent (D,), a 3x3 conv for a latent
    (C', H/2, W/2). The decoder mirrors it (nearest-neighbour upsampling) and outputs 2 C
    channels (mean, log-scale).

    Args:
        image_size: H = W. in_channels: C.
        latent_shape: (D,) or (C', H/2, W/2).
        channels: ch.
        levels, lo, hi: the data's quantization grid (digits: 17 levels in [-1, 1]).
    """

    def __init__(self, image_size: int = 8, in_channels: int = 1, latent_shape=(16,),
                 channels: int = 32, levels: int = 17, lo: float = -1.0, hi: float = 1.0):
        super().__init__()
        latent_shape = tuple(int(d) for d in latent_shape)
        half = image_size // 2
        if image_size % 2 or image_size < 2:
            raise ValueError(f"image_size must be even, got {image_size}")
        if len(latent_shape) not in (1, 3) or (len(latent_shape) == 3
                                               and latent_shape[1:] != (half, half)):
            raise ValueError(f"latent_shape must be (D,) or (C, {half}, {half}), got "
                             f"{list(latent_shape)}")
        self.image_shape = (in_channels, image_size, image_size)
        self.latent_shape, self.levels, self.lo, self.hi = latent_shape, levels, lo, hi
        c2, flat = 2 * channels, len(latent_shape) == 1
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(channels, c2, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c2, c2, 3, padding=1), nn.SiLU())
        if flat:
            d = latent_shape[0]
            self.enc_head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * half * half, 2 * d))
            self.dec_head = nn.Sequential(nn.Linear(d, c2 * half * half),
                                          nn.Unflatten(1, (c2, half, half)))
        else:
            self.enc_head = nn.Conv2d(c2, 2 * latent_shape[0], 3, padding=1)
            self.dec_head = nn.Conv2d(latent_shape[0], c2, 3, padding=1)
        self.decoder = nn.Sequential(
            nn.SiLU(), nn.Conv2d(c2, c2, 3, padding=1), nn.SiLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c2, channels, 3, padding=1),
            nn.SiLU(), nn.Conv2d(channels, 2 * in_channels, 3, padding=1))

    def encode(self, x: torch.Tensor):
        """(mu, log sigma) of q(z_0 | x), each [B, *latent_shape], for x [B, C, H, W]."""
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.image_shape:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, {', '.join(map(str, self.image_shape))}], got "
                             f"{shape}")
        h = self.enc_head(self.encoder(x))
        mu, log_sigma = h.chunk(2, dim=1)
        return mu, log_sigma

    def decode(self, z: torch.Tensor):
        """(mean, log-scale) of p(x | z), each [B, C, H, W], for z [B, *latent_shape]."""
        if not isinstance(z, torch.Tensor) or tuple(z.shape[1:]) != self.latent_shape:
            shape = list(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must be [B, {', '.join(map(str, self.latent_shape))}], got "
                             f"{shape}")
        mean, log_scale = self.decoder(self.dec_head(z)).chunk(2, dim=1)
        return mean, log_scale

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image, clamped to [lo, hi], [B, C, H, W] (how LSGM samples)."""
        return self.decode(z)[0].clamp(self.lo, self.hi)

    def nll(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) in nats, [B] (the reconstruction term)."""
        mean, log_scale = self.decode(z)
        return discretized_logistic_nll(x, mean, log_scale, self.levels, self.lo, self.hi)

    @staticmethod
    def gaussian_entropy(log_sigma: torch.Tensor) -> torch.Tensor:
        """H(N(mu, diag sigma^2)) = sum_i (log sigma_i + log(2 pi e) / 2), [B]."""
        return (log_sigma + 0.5 * math.log(2 * math.pi * math.e)).flatten(1).sum(1)

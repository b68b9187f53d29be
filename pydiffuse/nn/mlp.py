"""An MLP score network for low-dimensional data (the toy 2-D sets), with the UNet's call
convention ``model(x, t, y=None)``."""

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConditionEmbedding, check_output_scale, check_time, zero_init


class MLPBlock(nn.Module):
    """h + Linear(SiLU(Linear(SiLU(h)) + Linear(e))): a pre-activation residual block with the
    conditioning e added in the middle (the ResBlock of DDPM, Ho et al. 2020, for vectors)."""

    def __init__(self, hidden: int, emb_dim=None, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = None if emb_dim is None else nn.Linear(emb_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h, emb=None):
        z = self.fc1(F.silu(h))
        if self.emb_proj is not None:
            z = z + self.emb_proj(emb)
        return h + self.fc2(self.dropout(F.silu(z)))


class MLP(nn.Module):
    """A residual MLP for x [B, D]: out = Linear(SiLU(blocks(Linear(x), e))), with e the
    time (and class) embedding of ``ConditionEmbedding`` as in the UNet. The output layer starts
    at zero (as the UNet's). Smooth (SiLU), so exact score matching can differentiate it twice
    (Hyvärinen 2005). ``output_scale="inv_sigma"`` returns out / sigma with t = sigma (NCSNv2's
    technique 3, Song & Ermon 2020).

    Args:
        dim: D.
        hidden: width of the hidden layers.
        depth: residual blocks.
        time_input: "index" | "unit" | "sigma" | None.
        num_classes: classes of y (+ the null label), or None.
        output_scale: None or "inv_sigma".
        learned_sigma: output 2D (iDDPM's v in the second half).
        dropout: in every block.

    ``forward(x [B, D], t [B] (or a scalar), y [B] long or None)`` returns [B, D or 2D].
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_input="index",
                 num_classes=None, output_scale=None, learned_sigma: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        check_output_scale(output_scale, time_input, learned_sigma)
        self.dim, self.output_scale = dim, output_scale
        self.embed = ConditionEmbedding(hidden, hidden, time_input, num_classes)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(MLPBlock(hidden, self.embed.emb_dim, dropout)
                                    for _ in range(depth))
        self.out = zero_init(nn.Linear(hidden, dim * (2 if learned_sigma else 1)))

    @property
    def null_label(self):
        """The null (unconditional) label for classifier-free guidance, or None."""
        return self.embed.null_label

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, {self.dim}], got {shape}")
        t = check_time(t, x.shape[0], x.device)
        emb = self.embed(t, y, x.shape[0])
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        out = self.out(F.silu(h))
        if self.output_scale == "inv_sigma":
            out = out / t.to(out.dtype)[:, None]
        return out

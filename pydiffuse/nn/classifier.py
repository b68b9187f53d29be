"""ADM's noisy classifier (Dhariwal & Nichol 2021, §4): the UNet's encoder half with an attention
pooling head, p(y | x_t, t) for classifier guidance."""

import torch
from torch import nn

from ..ops.attention import attention
from .blocks import ConditionEmbedding, check_time
from .norm import GroupNorm
from .unet import UNetEncoder, attention_factors


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling, as ADM's classifier head: the mean token attends to all tokens.

        tokens = [mean_HW(x), x_1, ..., x_HW] + positional embedding     # [HW + 1, C]
        q = Wq tokens_0;  k, v = Wk tokens, Wv tokens                     # heads of head_channels
        out = Wc attention(q, k, v)                                      # [out_dim]

    ADM attends from every token and keeps token 0; only token 0's query is computed here (the
    same output).

    Args:
        spatial: H = W of the input.
        channels: C.
        head_channels: width of each head (a divisor of C).
        out_dim: width of the output.
    """

    def __init__(self, spatial: int, channels: int, head_channels: int, out_dim: int):
        super().__init__()
        if head_channels < 1 or channels % head_channels:
            raise ValueError(f"channels ({channels}) must be divisible by head_channels "
                             f"({head_channels})")
        self.spatial, self.head_channels = spatial, head_channels
        self.heads = channels // head_channels
        self.positional = nn.Parameter(torch.randn(spatial * spatial + 1, channels)
                                       / channels ** 0.5)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, spatial, spatial] -> [B, out_dim]."""
        b, c, h, w = x.shape
        if (h, w) != (self.spatial, self.spatial):
            raise ValueError(f"attention pooling was built for {self.spatial}x{self.spatial} "
                             f"features, got {h}x{w}")
        tokens = x.reshape(b, c, h * w).transpose(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        q, k, v = (self.qkv(tokens + self.positional.to(tokens.dtype))
                   .reshape(b, h * w + 1, 3, self.heads, self.head_channels)
                   .permute(2, 0, 3, 1, 4))                    # each [B, heads, HW + 1, hc]
        out = attention(q[:, :, :1].contiguous(), k, v)        # [B, heads, 1, hc]
        return self.proj(out.reshape(b, c))


class NoisyClassifier(nn.Module):
    """ADM's classifier of noisy images (Dhariwal & Nichol 2021, §4; ``EncoderUNetModel`` with
    ``pool="attention"``): the UNet's time embedding, input blocks and middle block, then
    SiLU(GN(h)) and attention pooling to logits. ``classifier(x, t)`` is what classifier guidance
    calls (``pydiffuse.sample(..., classifier=clf, labels=y)``).

    Args:
        image_size: H = W of the inputs (the pooling's positional embedding is built for it).
        num_classes: number of logits.
        pool_head_channels: width of each head of the pooling.
        the rest: as ``UNet`` (no class conditioning, no output options).

    ``forward(x [B, C, image_size, image_size], t [B])`` returns logits [B, num_classes].
    """

    def __init__(self, image_size: int, num_classes: int, in_channels: int = 3,
                 model_channels: int = 128, channel_mult=(1, 2, 3, 4), num_res_blocks: int = 2,
                 attention_resolutions=(32, 16, 8), num_heads: int = 1, head_channels=64,
                 dropout: float = 0.0, scale_shift: bool = True, resblock_updown: bool = True,
                 conv_resample: bool = True, time_input="index", num_groups: int = 32,
                 skip_scale: bool = False, pool_head_channels: int = 64):
        super().__init__()
        levels = len(channel_mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size ({image_size}) must be divisible by "
                             f"{2 ** (levels - 1)}, the downsampling factor of {levels} levels")
        self.image_size, self.num_classes = image_size, num_classes
        self.embed = ConditionEmbedding(model_channels, 4 * model_channels, time_input)
        self.encoder = UNetEncoder(
            in_channels, model_channels, channel_mult, num_res_blocks,
            attention_factors(image_size, attention_resolutions, levels), self.embed.emb_dim,
            num_heads=num_heads, head_channels=head_channels, dropout=dropout,
            scale_shift=scale_shift, resblock_updown=resblock_updown,
            conv_resample=conv_resample, num_groups=num_groups, skip_scale=skip_scale)
        ch = self.encoder.out_channels
        self.out_norm = GroupNorm(num_groups, ch, act="silu")
        self.pool = AttentionPool2d(image_size // 2 ** (levels - 1), ch, pool_head_channels,
                                    num_classes)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        self.encoder.check(x)
        if x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"the classifier takes {self.image_size}x{self.image_size} images, "
                             f"got {x.shape[2]}x{x.shape[3]}")
        t = check_time(t, x.shape[0], x.device)
        h, _ = self.encoder(x, self.embed(t, None, x.shape[0]))
        return self.pool(self.out_norm(h))

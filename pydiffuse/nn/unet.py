"""The diffusion UNet of DDPM (Ho et al. 2020, Appendix B) and ADM (Dhariwal & Nichol 2021, §3),
configurable between them, on the fused norms and attention of ``pydiffuse.ops``."""

import functools

import torch
from torch import nn

from .diffusers_layout import diffusers_config, diffusers_state_dict, unet_kwargs, unet_state_dict
from .blocks import (AttentionBlock, ConditionEmbedding, Downsample, EmbedSequential, ResBlock,
                     Upsample, check_output_scale, check_time, zero_init)
from .norm import GroupNorm


def attention_factors(image_size: int, attention_resolutions, levels: int) -> set:
    """The downsampling factors ds = image_size // r of the resolutions r (pixels at
    ``image_size``) that get attention, checked to be levels of the UNet (ds = 1, 2, 4, ...)."""
    factors = set()
    for r in attention_resolutions:
        ds = image_size // r if r > 0 and image_size % r == 0 else 0
        if ds < 1 or ds & (ds - 1) or ds >= 2 ** levels:
            raise ValueError(f"attention resolution {r} is not a level of this UNet (levels "
                             f"{[image_size // 2 ** i for i in range(levels)]} for "
                             f"image_size {image_size})")
        factors.add(ds)
    return factors


class UNetEncoder(nn.Module):
    """The input blocks and middle block of the UNet (ADM's ``EncoderUNetModel`` before its
    head): per level ``num_res_blocks`` ResBlocks (+ attention at the chosen factors), then a
    downsampling (a BigGAN ResBlock with ``resblock_updown``, else ``Downsample``); the middle is
    ResBlock, attention, ResBlock. Shared by ``UNet`` and ``NoisyClassifier``.

    Args: those of ``UNet``, with ``attention_ds`` (downsampling factors) for the resolutions and
    ``emb_dim`` the embedding's width (or None). ``forward(x, emb)`` returns (h, the activations
    the decoder's skips read).
    """

    def __init__(self, in_channels: int, model_channels: int, channel_mult, num_res_blocks: int,
                 attention_ds, emb_dim, *, num_heads=1, head_channels=None, dropout=0.0,
                 scale_shift=False, resblock_updown=False, conv_resample=True, num_groups=32,
                 skip_scale=False, norm_eps=1e-5, downsample_padding=1):
        super().__init__()
        if not channel_mult or num_res_blocks < 1 or model_channels < 1:
            raise ValueError("channel_mult must be non-empty, num_res_blocks and model_channels "
                             "positive")
        self.in_channels, self.levels = in_channels, len(channel_mult)
        self.res = functools.partial(ResBlock, emb_dim=emb_dim, dropout=dropout,
                                     scale_shift=scale_shift, num_groups=num_groups,
                                     skip_scale=skip_scale, eps=norm_eps)
        self.attn = functools.partial(
            AttentionBlock, num_heads=None if head_channels else num_heads,
            head_channels=head_channels, num_groups=num_groups, skip_scale=skip_scale,
            eps=norm_eps)
        ch = channel_mult[0] * model_channels
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3,
                                                                     padding=1))])
        self.skip_channels, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [self.res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_ds:
                    layers.append(self.attn(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                self.skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(
                    self.res(ch, ch, down=True) if resblock_updown
                    else Downsample(ch, use_conv=conv_resample, padding=downsample_padding)))
                self.skip_channels.append(ch)
                ds *= 2
        self.middle = EmbedSequential(self.res(ch, ch), self.attn(ch), self.res(ch, ch))
        self.out_channels = ch

    def check(self, x) -> None:
        """ValueError unless x is [B, in_channels, H, W] with H, W multiples of 2^(levels-1)."""
        factor = 2 ** (self.levels - 1)
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, {self.in_channels}, H, W], got {shape}")
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"the image size {x.shape[2]}x{x.shape[3]} must be divisible by "
                             f"{factor}, the downsampling factor of the {self.levels} levels")

    def forward(self, x, emb):
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        return self.middle(h, emb), hs


class UNet(nn.Module):
    """The diffusion UNet: DDPM's (Ho et al. 2020, Appendix B: Wide-ResNet blocks, GN, a
    self-attention block at 16x16, sinusoidal time embedding) and ADM's improvements
    (Dhariwal & Nichol 2021, §3: more heads or 64 channels per head, attention at several
    resolutions, BigGAN up/down residual blocks, AdaGN scale-shift norm, class embedding added to
    the time embedding), with ``model(x, t, y=None)``:

        e = SiLU(MLP(sinusoid(t)) + Embedding(y));  h = encoder(x, e);
        h = decoder(cat(h, skips), e);  out = Conv3x3(SiLU(GN(h)))   # the last conv starts at 0

    The decoder has ``num_res_blocks + 1`` ResBlocks per level, each on the concatenation with one
    encoder activation, attention where the encoder has it, and an upsampling at the end of every
    level but the top. ``learned_sigma`` doubles the output channels (iDDPM's v in the second
    half); ``output_scale="inv_sigma"`` returns out / sigma with t = sigma, NCSNv2's
    noise-unconditional score s(x) / sigma (Song & Ermon 2020, technique 3; with
    ``time_input=None``).

    Args:
        image_size: the training resolution; ``attention_resolutions`` are pixels at it (the
            network runs at any H, W divisible by 2^(levels - 1)).
        in_channels: C of x.
        model_channels: base width; level i has ``channel_mult[i] * model_channels``.
        channel_mult: per-level multipliers (its length is the number of levels).
        num_res_blocks: ResBlocks per encoder level.
        attention_resolutions: resolutions (pixels) with self-attention; the middle always has it.
        num_heads: heads of every attention block, unless ``head_channels`` (a fixed width per
            head, which wins) is given; the GPU kernels run head widths 32, 64 and 128.
        dropout: in every ResBlock.
        scale_shift: AdaGN (ADM's use_scale_shift_norm) instead of the additive embedding.
        resblock_updown: BigGAN residual up/down blocks instead of ``Upsample``/``Downsample``.
        conv_resample: plain up/downsampling with a 3x3 convolution (else without).
        num_classes: classes of y (the model embeds num_classes + 1: the last is the null label
            of classifier-free guidance), or None.
        learned_sigma: output 2C channels.
        time_input: "index" | "unit" | "sigma" | None (see ``ConditionEmbedding``).
        output_scale: None or "inv_sigma".
        num_groups: groups of every GroupNorm.
        skip_scale: residual outputs times 1/sqrt(2) (BigGAN, NCSN++).
        norm_eps: eps of every GroupNorm.
        freq_shift, sin_first: of the time sinusoid (1 and True in the DDPM TensorFlow models).
        downsample_padding: 1, or 0 (the DDPM TensorFlow models: see ``Downsample``).

    ``forward(x [B, C, H, W], t [B] (or a scalar), y [B] long or None)`` returns [B, C or 2C, H, W].
    """

    def __init__(self, image_size: int, in_channels: int = 3, model_channels: int = 128,
                 channel_mult=(1, 2, 2, 2), num_res_blocks: int = 2, attention_resolutions=(16,),
                 num_heads: int = 1, head_channels=None, dropout: float = 0.0,
                 scale_shift: bool = False, resblock_updown: bool = False,
                 conv_resample: bool = True, num_classes=None, learned_sigma: bool = False,
                 time_input="index", output_scale=None, num_groups: int = 32,
                 skip_scale: bool = False, norm_eps: float = 1e-5, freq_shift: float = 0.0,
                 sin_first: bool = False, downsample_padding: int = 1):
        init_kwargs = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self.init_kwargs = init_kwargs  # the keywords above, for to_diffusers
        check_output_scale(output_scale, time_input, learned_sigma)
        self.image_size, self.in_channels = image_size, in_channels
        self.learned_sigma, self.output_scale = learned_sigma, output_scale
        self.embed = ConditionEmbedding(model_channels, 4 * model_channels, time_input,
                                        num_classes, freq_shift=freq_shift,
                                        sin_first=sin_first)
        attention_ds = attention_factors(image_size, attention_resolutions, len(channel_mult))
        enc = self.encoder = UNetEncoder(
            in_channels, model_channels, channel_mult, num_res_blocks, attention_ds,
            self.embed.emb_dim, num_heads=num_heads, head_channels=head_channels,
            dropout=dropout, scale_shift=scale_shift, resblock_updown=resblock_updown,
            conv_resample=conv_resample, num_groups=num_groups, skip_scale=skip_scale,
            norm_eps=norm_eps, downsample_padding=downsample_padding)
        skips, ch, ds = list(enc.skip_channels), enc.out_channels, 2 ** (len(channel_mult) - 1)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [enc.res(ch + skips.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_ds:
                    layers.append(enc.attn(ch))
                if level and i == num_res_blocks:
                    layers.append(enc.res(ch, ch, up=True) if resblock_updown
                                  else Upsample(ch, use_conv=conv_resample))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
        out_channels = in_channels * (2 if learned_sigma else 1)
        self.out_norm = GroupNorm(num_groups, ch, eps=norm_eps, act="silu")
        self.out_conv = zero_init(nn.Conv2d(ch, out_channels, 3, padding=1))

    @property
    def null_label(self):
        """The null (unconditional) label for classifier-free guidance, or None."""
        return self.embed.null_label

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        self.encoder.check(x)
        t = check_time(t, x.shape[0], x.device)
        emb = self.embed(t, y, x.shape[0])
        h, hs = self.encoder(x, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        out = self.out_conv(self.out_norm(h))
        if self.output_scale == "inv_sigma":
            out = out / t.to(out.dtype)[:, None, None, None]
        return out

    @classmethod
    def from_diffusers(cls, model, state_dict=None) -> "UNet":
        """The ``UNet`` computing what a diffusers ``UNet2DModel`` computes, on the same weights
        (shared tensors; q/k/v concatenated): ``model(x, t)`` equals ``theirs(x, t).sample``
        within float error. Blocks DownBlock2D / AttnDownBlock2D / UpBlock2D / AttnUpBlock2D
        (the DDPM layouts of google/ddpm-*, with their freq_shift 1 and downsample_padding 0, and
        ADM-style ones: "scale_shift" time embedding, heads of attention_head_dim channels);
        any other block type or setting is a ValueError naming it
        (``diffusers_layout.REQUIRED``).

        Args:
            model: a ``UNet2DModel``, or its config (a dict) with ``state_dict``, its weights.
        """
        config = model if state_dict is not None else model.config
        weights = state_dict if state_dict is not None else model.state_dict()
        unet = cls(**unet_kwargs(config))
        unet.load_state_dict(unet_state_dict(config, weights))
        return unet.to(next(iter(weights.values())).device)

    def to_diffusers(self):
        """The diffusers ``UNet2DModel`` computing what this UNet computes (the inverse of
        ``from_diffusers``; needs diffusers): a ValueError names a setting it has no counterpart
        of (BigGAN up/down blocks, class labels, a time input other than "index", ...)."""
        import diffusers  # an optional dependency, only here

        config = diffusers_config(self.init_kwargs)
        model = diffusers.UNet2DModel(**config)
        model.load_state_dict(diffusers_state_dict(config, self.state_dict()))
        return model.to(next(self.parameters()).device)

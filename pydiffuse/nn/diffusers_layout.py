"""How a diffusers ``UNet2DModel`` maps onto ``UNet``: its config as ``UNet`` keywords and its
state dict as ``UNet``'s, from the config dict and tensors alone (diffusers need not be
installed: ``pydiffuse.load`` reads a model folder with them)."""

import torch

DOWN = {"DownBlock2D": False, "AttnDownBlock2D": True}  # block type -> has attention
UP = {"UpBlock2D": False, "AttnUpBlock2D": True}
# config key -> the values UNet expresses (diffusers' defaults among them)
REQUIRED = {
    "time_embedding_type": ("positional",), "center_input_sample": (False,),
    "act_fn": ("silu",), "downsample_padding": (0, 1), "downsample_type": ("conv",),
    "upsample_type": ("conv",), "add_attention": (True,),
    "class_embed_type": (None,), "num_class_embeds": (None,), "mid_block_scale_factor": (1,),
    "resnet_time_scale_shift": ("default", "scale_shift"),
}


def unet_kwargs(config) -> dict:
    """``UNet`` keywords of a ``UNet2DModel`` config (a dict); ValueError naming the first block
    type or setting ``UNet`` cannot express."""
    config = dict(config)
    for key, allowed in REQUIRED.items():
        if key in config and config[key] not in allowed:
            raise ValueError(f"UNet cannot express the diffusers UNet2DModel setting {key}="
                             f"{config[key]!r} (it runs {', '.join(map(repr, allowed))})")
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    for kind, table in ((down, DOWN), (up, UP)):
        for name in kind:
            if name not in table:
                raise ValueError(f"UNet cannot express the diffusers block type {name!r} "
                                 f"(it runs {', '.join(DOWN)}, {', '.join(UP)})")
    attn = [DOWN[name] for name in down]
    if len(up) != len(down) or [UP[name] for name in reversed(up)] != attn:
        raise ValueError(f"UNet needs up_block_types mirroring down_block_types with attention "
                         f"at the same levels, got {down} and {up}")
    groups, scale_shift = config.get("norm_num_groups", 32), \
        config.get("resnet_time_scale_shift") == "scale_shift"
    middle = config.get("attn_norm_num_groups") or (None if scale_shift else groups)
    if middle != groups:  # diffusers' scale_shift middle attention has no norm unless set
        raise ValueError(f"UNet's middle attention has a GroupNorm of norm_num_groups={groups} "
                         f"groups; this UNet2DModel's has {middle or 'none'} "
                         f"(attn_norm_num_groups={config.get('attn_norm_num_groups')!r})")
    channels = list(config["block_out_channels"])
    base = channels[0]
    if any(c % base for c in channels):
        raise ValueError(f"UNet needs block_out_channels that are multiples of the first, got "
                         f"{channels}")
    size = config["sample_size"]
    if not isinstance(size, int):
        raise ValueError(f"UNet needs a square sample_size (an int), got {size!r}")
    in_ch, out_ch = config.get("in_channels", 3), config.get("out_channels", 3)
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(f"UNet outputs in_channels or twice that (learned sigma), not "
                         f"out_channels={out_ch} for in_channels={in_ch}")
    head = config.get("attention_head_dim")
    return dict(image_size=size, in_channels=in_ch, model_channels=base,
                channel_mult=tuple(c // base for c in channels),
                num_res_blocks=config.get("layers_per_block", 2),
                attention_resolutions=tuple(size // 2 ** i for i, a in enumerate(attn) if a),
                num_heads=1, head_channels=head,
                dropout=config.get("dropout", 0.0),
                scale_shift=scale_shift, learned_sigma=out_ch == 2 * in_ch, num_groups=groups,
                norm_eps=config.get("norm_eps", 1e-5), freq_shift=config.get("freq_shift", 0),
                downsample_padding=config.get("downsample_padding", 1))


def unet_state_dict(config, weights: dict) -> dict:
    """``UNet``'s state dict from a ``UNet2DModel``'s ``weights`` (same tensors, q/k/v weights
    concatenated into the 1x1 qkv convolution, the sinusoid's halves swapped into UNet's
    [cos, sin] order when ``flip_sin_to_cos`` is False)."""
    kw, out = unet_kwargs(config), {}
    levels, per_level = len(kw["channel_mult"]), kw["num_res_blocks"]

    def copy(dst, src):
        for s in ("weight", "bias"):
            if f"{src}.{s}" in weights:
                out[f"{dst}.{s}"] = weights[f"{src}.{s}"]

    def res(dst, src):
        copy(f"{dst}.in_norm", f"{src}.norm1")
        copy(f"{dst}.in_conv", f"{src}.conv1")
        copy(f"{dst}.out_norm.proj" if kw["scale_shift"] else f"{dst}.emb_proj",
             f"{src}.time_emb_proj")
        copy(f"{dst}.out_norm", f"{src}.norm2")
        copy(f"{dst}.out_conv", f"{src}.conv2")
        copy(f"{dst}.skip", f"{src}.conv_shortcut")

    def attn(dst, src):
        copy(f"{dst}.norm", f"{src}.group_norm")
        for s, tail in (("weight", (None, None)), ("bias", ())):
            qkv = torch.cat([weights[f"{src}.to_{n}.{s}"] for n in "qkv"])
            out[f"{dst}.qkv.{s}"] = qkv[(..., *tail)]
            out[f"{dst}.proj.{s}"] = weights[f"{src}.to_out.0.{s}"][(..., *tail)]

    first = weights["time_embedding.linear_1.weight"]
    if not config.get("flip_sin_to_cos", True):  # diffusers' [sin, cos] -> UNet's [cos, sin]
        first = torch.cat(first.chunk(2, dim=1)[::-1], dim=1)
    out["embed.time_mlp.0.weight"] = first
    out["embed.time_mlp.0.bias"] = weights["time_embedding.linear_1.bias"]
    copy("embed.time_mlp.2", "time_embedding.linear_2")
    copy("encoder.input_blocks.0.0", "conv_in")
    attn_levels = [DOWN[name] for name in config["down_block_types"]]
    i = 1
    for level in range(levels):
        for r in range(per_level):
            res(f"encoder.input_blocks.{i}.0", f"down_blocks.{level}.resnets.{r}")
            if attn_levels[level]:
                attn(f"encoder.input_blocks.{i}.1", f"down_blocks.{level}.attentions.{r}")
            i += 1
        if level != levels - 1:
            copy(f"encoder.input_blocks.{i}.0.conv", f"down_blocks.{level}.downsamplers.0.conv")
            i += 1
    res("encoder.middle.0", "mid_block.resnets.0")
    attn("encoder.middle.1", "mid_block.attentions.0")
    res("encoder.middle.2", "mid_block.resnets.1")
    j = 0
    for u in range(levels):  # up block u is level levels - 1 - u
        has_attn = attn_levels[levels - 1 - u]
        for r in range(per_level + 1):
            res(f"output_blocks.{j}.0", f"up_blocks.{u}.resnets.{r}")
            if has_attn:
                attn(f"output_blocks.{j}.1", f"up_blocks.{u}.attentions.{r}")
            if u != levels - 1 and r == per_level:
                copy(f"output_blocks.{j}.{1 + has_attn}.conv", f"up_blocks.{u}.upsamplers.0.conv")
            j += 1
    copy("out_norm", "conv_norm_out")
    copy("out_conv", "conv_out")
    return out

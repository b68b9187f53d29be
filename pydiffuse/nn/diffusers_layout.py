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
                sin_first=not config.get("flip_sin_to_cos", True),
                downsample_padding=config.get("downsample_padding", 1))


def _layers(config):
    """(UNet prefix, UNet2DModel prefix, kind) of every layer with weights; kind "layer" (weight
    and bias as they are) or "attention" (UNet's qkv and proj 1x1 convolutions, diffusers'
    to_q/k/v and to_out.0 Linears)."""
    kw = unet_kwargs(config)
    levels, per_level = len(kw["channel_mult"]), kw["num_res_blocks"]
    has_attn = [DOWN[name] for name in config["down_block_types"]]
    layers = [("embed.time_mlp.0", "time_embedding.linear_1", "layer"),
              ("embed.time_mlp.2", "time_embedding.linear_2", "layer"),
              ("encoder.input_blocks.0.0", "conv_in", "layer")]

    def res(ours, theirs):
        emb = f"{ours}.out_norm.proj" if kw["scale_shift"] else f"{ours}.emb_proj"
        layers.extend((f"{ours}.{a}", f"{theirs}.{b}", "layer") for a, b in (
            ("in_norm", "norm1"), ("in_conv", "conv1"), ("out_norm", "norm2"),
            ("out_conv", "conv2"), ("skip", "conv_shortcut")))
        layers.append((emb, f"{theirs}.time_emb_proj", "layer"))

    def attn(ours, theirs):
        layers.extend([(f"{ours}.norm", f"{theirs}.group_norm", "layer"),
                       (ours, theirs, "attention")])

    i = 1
    for level in range(levels):
        for r in range(per_level):
            res(f"encoder.input_blocks.{i}.0", f"down_blocks.{level}.resnets.{r}")
            if has_attn[level]:
                attn(f"encoder.input_blocks.{i}.1", f"down_blocks.{level}.attentions.{r}")
            i += 1
        if level != levels - 1:
            layers.append((f"encoder.input_blocks.{i}.0.conv",
                           f"down_blocks.{level}.downsamplers.0.conv", "layer"))
            i += 1
    res("encoder.middle.0", "mid_block.resnets.0")
    attn("encoder.middle.1", "mid_block.attentions.0")
    res("encoder.middle.2", "mid_block.resnets.1")
    j = 0
    for u in range(levels):  # up block u is level levels - 1 - u
        attn_here = has_attn[levels - 1 - u]
        for r in range(per_level + 1):
            res(f"output_blocks.{j}.0", f"up_blocks.{u}.resnets.{r}")
            if attn_here:
                attn(f"output_blocks.{j}.1", f"up_blocks.{u}.attentions.{r}")
            if u != levels - 1 and r == per_level:
                layers.append((f"output_blocks.{j}.{1 + attn_here}.conv",
                               f"up_blocks.{u}.upsamplers.0.conv", "layer"))
            j += 1
    layers += [("out_norm", "conv_norm_out", "layer"), ("out_conv", "conv_out", "layer")]
    return layers


def _convert(config, weights: dict, to_unet: bool) -> dict:
    out = {}
    for ours, theirs, kind in _layers(config):
        src, dst = (theirs, ours) if to_unet else (ours, theirs)
        for s in ("weight", "bias"):
            if kind == "attention" and to_unet:
                qkv = torch.cat([weights[f"{src}.to_{n}.{s}"] for n in "qkv"])
                out[f"{dst}.qkv.{s}"] = qkv[:, :, None, None] if s == "weight" else qkv
                proj = weights[f"{src}.to_out.0.{s}"]
                out[f"{dst}.proj.{s}"] = proj[:, :, None, None] if s == "weight" else proj
            elif kind == "attention":
                flat = (lambda v: v[:, :, 0, 0]) if s == "weight" else (lambda v: v)
                for n, v in zip("qkv", flat(weights[f"{src}.qkv.{s}"]).chunk(3)):
                    out[f"{dst}.to_{n}.{s}"] = v
                out[f"{dst}.to_out.0.{s}"] = flat(weights[f"{src}.proj.{s}"])
            elif f"{src}.{s}" in weights:
                out[f"{dst}.{s}"] = weights[f"{src}.{s}"]
    return out


def unet_state_dict(config, weights: dict) -> dict:
    """``UNet``'s state dict from a ``UNet2DModel``'s ``weights`` (the same tensors; q/k/v
    concatenated into the 1x1 qkv convolution)."""
    return _convert(config, weights, to_unet=True)


def diffusers_state_dict(config, weights: dict) -> dict:
    """The ``UNet2DModel`` state dict (of ``config``) from ``UNet``'s ``weights``: the inverse of
    ``unet_state_dict``."""
    return _convert(config, weights, to_unet=False)


def diffusers_config(kw: dict) -> dict:
    """The ``UNet2DModel`` config of every ``UNet`` keyword (``UNet.init_kwargs``); ValueError
    naming a setting UNet2DModel does not have."""
    for key, plain in (("resblock_updown", False), ("conv_resample", True), ("num_classes", None),
                       ("time_input", "index"), ("output_scale", None), ("skip_scale", False)):
        if kw[key] != plain:
            raise ValueError(f"UNet2DModel has no counterpart of UNet's {key}={kw[key]!r}")
    size, base = kw["image_size"], kw["model_channels"]
    if kw["head_channels"] is None and kw["num_heads"] != 1:
        raise ValueError(f"UNet2DModel fixes the channels per head (attention_head_dim), not "
                         f"num_heads={kw['num_heads']}: give head_channels")
    attn = {size // r for r in kw["attention_resolutions"]}
    levels = range(len(kw["channel_mult"]))
    return dict(sample_size=size, in_channels=kw["in_channels"],
                out_channels=kw["in_channels"] * (2 if kw["learned_sigma"] else 1),
                block_out_channels=tuple(m * base for m in kw["channel_mult"]),
                layers_per_block=kw["num_res_blocks"],
                down_block_types=tuple("AttnDownBlock2D" if 2 ** i in attn else "DownBlock2D"
                                       for i in levels),
                up_block_types=tuple("AttnUpBlock2D" if 2 ** i in attn else "UpBlock2D"
                                     for i in reversed(levels)),
                attention_head_dim=kw["head_channels"], dropout=kw["dropout"],
                resnet_time_scale_shift="scale_shift" if kw["scale_shift"] else "default",
                attn_norm_num_groups=kw["num_groups"], norm_num_groups=kw["num_groups"],
                norm_eps=kw["norm_eps"], freq_shift=kw["freq_shift"],
                flip_sin_to_cos=not kw["sin_first"],
                downsample_padding=kw["downsample_padding"])

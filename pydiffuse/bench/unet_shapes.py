"""The UNet-shapes sweep of ``group_norm`` and ``attention`` (issue 15): the shapes a diffusion
UNet runs them at, each to be timed beside its eager PyTorch expression. Plain data (no imports),
read by whatever times it.

Each entry is a dict:

- ``op``: ``"group_norm"`` or ``"attention"``.
- ``shapes``: ``{"x": [B, C, H, W]}`` for group_norm; ``{"q": [B, H, Nq, D], "kv": [B, H, Nk,
  D]}`` for attention (k and v have the same shape).
- ``options``: group_norm: ``num_groups``, ``act`` (None or "silu"), ``affine`` (weight and bias
  [C]), ``adagn`` (scale and shift [B, C]), ``memory_format`` ("contiguous" or
  "channels_last"), ``dtype`` ("float32", "bfloat16", "float16"); attention: ``dtype``.
- ``label``: a short name for a report row.
- ``source``: where the shape comes from: "issue-15" (the measurements of the issue), "cifar10"
  (the DDPM CIFAR-10 UNet, batch 8), "sd" (Stable-Diffusion-like levels, batch 2).

The eager baselines: group_norm, ``F.group_norm(x, G, weight, bias, eps)``, then for AdaGN
``* (1 + scale[:, :, None, None]) + shift[:, :, None, None]``, then ``F.silu`` when act is
"silu"; attention, ``F.scaled_dot_product_attention(q, k, v)`` (q, k, v C-order).
"""


def _gn(shape, label, source, *, act="silu", affine=True, adagn=False,
        memory_format="contiguous", dtype="float32", num_groups=32):
    return {"op": "group_norm", "shapes": {"x": list(shape)},
            "options": {"num_groups": num_groups, "act": act, "affine": affine, "adagn": adagn,
                        "memory_format": memory_format, "dtype": dtype},
            "label": label, "source": source}


def _attn(q, kv, label, source, *, dtype="float32"):
    return {"op": "attention", "shapes": {"q": list(q), "kv": list(kv)},
            "options": {"dtype": dtype}, "label": label, "source": source}


UNET_SHAPES = [
    # the table
    _gn((8, 256, 4, 4), "gn+silu 8x256x4x4", "issue-15"),
    _gn((1, 256, 4, 4), "gn+silu 1x256x4x4", "issue-15"),
    _gn((8, 256, 8, 8), "gn+silu 8x256x8x8", "issue-15"),
    _gn((8, 128, 32, 32), "gn 8x128x32x32", "issue-15", act=None),
    _gn((8, 128, 32, 32), "gn+silu 8x128x32x32", "issue-15"),
    _attn((8, 1, 16, 256), (8, 1, 16, 256), "attn 1h x 256, 16 tok", "issue-15"),
    _attn((8, 1, 64, 256), (8, 1, 64, 256), "attn 1h x 256, 64 tok", "issue-15"),
    _attn((8, 4, 1024, 64), (8, 4, 1024, 64), "attn 4h x 64, 1024 tok", "issue-15"),
    # the CIFAR-10 DDPM UNet's levels, batch 8
    _gn((8, 256, 16, 16), "gn+silu 8x256x16x16", "cifar10"),
    _gn((8, 128, 32, 32), "adagn+silu 8x128x32x32", "cifar10", adagn=True),
    _gn((8, 256, 8, 8), "adagn+silu 8x256x8x8", "cifar10", adagn=True),
    _gn((8, 128, 32, 32), "gn+silu 8x128x32x32 cl", "cifar10", memory_format="channels_last"),
    _gn((8, 256, 4, 4), "gn+silu 8x256x4x4 cl", "cifar10", memory_format="channels_last"),
    _gn((8, 128, 32, 32), "gn+silu 8x128x32x32 bf16", "cifar10", dtype="bfloat16"),
    _gn((8, 256, 4, 4), "gn+silu 8x256x4x4 bf16", "cifar10", dtype="bfloat16"),
    _gn((8, 256, 8, 8), "gn 8x256x8x8 no affine", "cifar10", act=None, affine=False),
    _attn((8, 1, 256, 256), (8, 1, 256, 256), "attn 1h x 256, 256 tok", "cifar10"),
    _attn((8, 4, 256, 64), (8, 4, 256, 64), "attn 4h x 64, 256 tok", "cifar10"),
    # Stable-Diffusion-like levels, batch 2, 32 groups; 8 heads; cross-attention on 77 tokens of
    # a 768-wide text encoder, projected to the level's width
    _gn((2, 320, 64, 64), "gn+silu 2x320x64x64", "sd"),
    _gn((2, 640, 32, 32), "gn+silu 2x640x32x32", "sd"),
    _gn((2, 1280, 16, 16), "gn+silu 2x1280x16x16", "sd"),
    _gn((2, 1280, 8, 8), "gn+silu 2x1280x8x8", "sd"),
    _gn((2, 320, 64, 64), "gn 2x320x64x64", "sd", act=None),
    _gn((2, 1280, 8, 8), "gn 2x1280x8x8", "sd", act=None),
    _gn((2, 640, 32, 32), "gn+silu 2x640x32x32 fp16", "sd", dtype="float16"),
    _attn((2, 8, 4096, 40), (2, 8, 4096, 40), "attn 8h x 40, 4096 tok", "sd"),
    _attn((2, 8, 1024, 80), (2, 8, 1024, 80), "attn 8h x 80, 1024 tok", "sd"),
    _attn((2, 8, 256, 160), (2, 8, 256, 160), "attn 8h x 160, 256 tok", "sd"),
    _attn((2, 8, 4096, 40), (2, 8, 77, 40), "xattn 8h x 40, 4096 x 77", "sd"),
    _attn((2, 8, 1024, 80), (2, 8, 77, 80), "xattn 8h x 80, 1024 x 77", "sd"),
    _attn((2, 8, 256, 160), (2, 8, 77, 160), "xattn 8h x 160, 256 x 77", "sd"),
]

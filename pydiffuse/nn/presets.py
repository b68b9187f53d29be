"""Named model configurations: ``model, kwargs = create_model("digits")``.

- ``digits``: a small class-conditional UNet for the 1x8x8 digits (AdaGN, attention at 4x4,
  null label 10 for classifier-free guidance); about 0.76M parameters.
- ``cifar10-ddpm``: DDPM's CIFAR-10 UNet (Ho et al. 2020, Appendix B: ch 128, mult (1, 2, 2, 2),
  2 ResBlocks per level, attention at 16x16, dropout 0.1): 35,746,307 parameters, as the
  original and diffusers' ``google/ddpm-cifar10-32``. One difference: its attention runs 4 heads
  of 64 channels instead of DDPM's single head of 256 (the GPU kernels run head widths 32, 64,
  128; the parameters are the same; ``num_heads=1, head_channels=None`` gives DDPM's on the CPU).
- ``adm-64``: ADM's ImageNet-64 model (Dhariwal & Nichol 2021, Table 11 / guided-diffusion's
  64x64 flags: ch 192, mult (1, 2, 3, 4), 3 ResBlocks, attention at 32, 16, 8 with 64 channels
  per head, AdaGN, BigGAN up/down, dropout 0.1, learned sigma, 1000 classes). Differences: one
  more label embedding (the null label of classifier-free guidance); float32 weights (train it
  under autocast rather than ADM's fp16 weights).
- ``mlp``: the MLP score network for 2-D toy data.
- ``digits-classifier``, ``adm-64-classifier``: ADM's noisy classifiers (encoder + attention
  pooling) for digits and for ImageNet-64 (guided-diffusion's 64x64 classifier flags: width 128,
  depth 4, attention at 32, 16, 8, AdaGN, BigGAN up/down).
"""

import inspect

from torch import nn

from .classifier import NoisyClassifier
from .mlp import MLP
from .unet import UNet

PRESETS = {
    "digits": (UNet, dict(
        image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(4,), head_channels=32, dropout=0.1, scale_shift=True,
        num_classes=10, num_groups=8)),
    "cifar10-ddpm": (UNet, dict(
        image_size=32, in_channels=3, model_channels=128, channel_mult=(1, 2, 2, 2),
        num_res_blocks=2, attention_resolutions=(16,), head_channels=64, dropout=0.1)),
    "adm-64": (UNet, dict(
        image_size=64, in_channels=3, model_channels=192, channel_mult=(1, 2, 3, 4),
        num_res_blocks=3, attention_resolutions=(32, 16, 8), head_channels=64, dropout=0.1,
        scale_shift=True, resblock_updown=True, num_classes=1000, learned_sigma=True)),
    "mlp": (MLP, dict(dim=2, hidden=128, depth=3, time_input="index")),
    "digits-classifier": (NoisyClassifier, dict(
        image_size=8, num_classes=10, in_channels=1, model_channels=32, channel_mult=(1, 2),
        num_res_blocks=1, attention_resolutions=(4,), head_channels=32, scale_shift=True,
        resblock_updown=False, num_groups=8, pool_head_channels=32)),
    "adm-64-classifier": (NoisyClassifier, dict(
        image_size=64, num_classes=1000, in_channels=3, model_channels=128,
        channel_mult=(1, 2, 3, 4), num_res_blocks=4, attention_resolutions=(32, 16, 8),
        head_channels=64, scale_shift=True, resblock_updown=True, pool_head_channels=64)),
}


def create_model(name: str, **overrides) -> tuple[nn.Module, dict]:
    """Builds a preset, with any constructor argument overridden.

    Args:
        name: a key of ``PRESETS``.
        overrides: constructor keywords replacing the preset's (e.g. ``dropout=0.0``).

    Returns:
        (model, kwargs): the module and every constructor keyword it was built with (the
        preset's, overridden), so ``create_model(name, **kwargs)`` builds it again.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    cls, kwargs = PRESETS[name]
    allowed = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for preset {name!r} ({cls.__name__}); "
                         f"options: {', '.join(allowed)}")
    kwargs = {**kwargs, **overrides}
    return cls(**kwargs), kwargs

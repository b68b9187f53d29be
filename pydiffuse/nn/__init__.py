"""Layers and models on the fused ops (DESIGN.md): norms, attention, the UNet (DDPM and ADM
styles), ADM's noisy classifier, an MLP score network, their presets, the exact
Gaussian-mixture score (the samplers' oracle), LSGM's VAE and mixed-score latent prior, and
the ``Denoiser`` through which the samplers and the likelihoods call a model."""

from .attention import SelfAttention2d
from .classifier import NoisyClassifier
from .denoiser import Denoiser
from .gaussian_mixture import GaussianMixtureScore, distance_to_truth, mixture_2d, mixture_8d
from .lsgm import LSGM, MixedScore, build_lsgm
from .mlp import MLP
from .norm import AdaGroupNorm, GroupNorm
from .presets import PRESETS, create_model
from .unet import UNet
from .vae import ConvVAE

__all__ = ["LSGM", "MLP", "PRESETS", "AdaGroupNorm", "ConvVAE", "Denoiser",
           "GaussianMixtureScore", "GroupNorm", "MixedScore", "NoisyClassifier", "SelfAttention2d",
           "UNet", "build_lsgm", "create_model", "distance_to_truth", "mixture_2d", "mixture_8d"]

"""Likelihoods: the discrete-diffusion variational bound (``vlb``) and the probability-flow
ODE's exact log-likelihood (``ode_nll``) of diffusion models, in nats and bits per dimension, and
annealed importance sampling (``ais``) for normalizing constants and decoder likelihoods."""

from .annealed_importance import (AISResult, DecoderLikelihood, ais, ais_decoder_log_likelihood,
                                  ais_schedule, log_z_estimate)
from .dopri5 import dopri5
from .ode import ODENLLResult, exact_divergence, hutchinson_divergence, ode_nll
from .vlb import (VLBResult, discretized_gaussian_log_likelihood, normal_kl, p_mean_logvar,
                  prior_kl, vlb, vlb_terms)

__all__ = ["AISResult", "DecoderLikelihood", "ODENLLResult", "VLBResult", "ais",
           "ais_decoder_log_likelihood", "ais_schedule", "discretized_gaussian_log_likelihood",
           "dopri5", "exact_divergence", "hutchinson_divergence", "log_z_estimate", "normal_kl",
           "ode_nll", "p_mean_logvar", "prior_kl", "vlb", "vlb_terms"]

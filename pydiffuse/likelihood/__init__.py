"""Likelihoods: the discrete-diffusion variational bound (``vlb``)."""

from .vlb import (discretized_gaussian_log_likelihood, normal_kl, p_mean_logvar, prior_kl,
                  total_vlb, vlb_terms)

__all__ = ["discretized_gaussian_log_likelihood", "normal_kl", "p_mean_logvar", "prior_kl",
           "total_vlb", "vlb_terms"]

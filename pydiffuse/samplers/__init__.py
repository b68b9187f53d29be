"""Every sampler as a plain function ``sample_<name>(model, x_T, process, *, steps, seed, ...)``
over the fused ops; ``pydiffuse.sample`` is the front door.

- ddpm: ancestral (Ho et al. 2020; iDDPM variances and respacing)
- ddim: DDIM with any eta, and ``ddim_invert`` (Song, Meng & Ermon 2021)
- ald: annealed Langevin dynamics (NCSN, NCSNv2)
- pc: predictor-corrector for score SDEs, masked for inpainting/colorization (Song et al. 2021)
- ode: the probability-flow ODE (Euler, Heun, adaptive RK45)
- euler, heun: EDM's samplers with churn (Karras et al. 2022); dpmpp_2m: DPM-Solver++(2M)
- sgld: stochastic gradient Langevin dynamics for Bayesian posteriors (Welling & Teh 2011)
"""

from ._common import Denoiser
from .ald import sample_ald
from .api import SAMPLERS, sample
from .cuda_graph import clear_graphs
from .ddim import ddim_invert, sample_ddim
from .ddpm import sample_ddpm
from .edm import sample_dpmpp_2m, sample_euler, sample_heun
from .ode import sample_ode
from .pc import sample_colorize, sample_pc
from .sgld import sgld, sgld_step_sizes

__all__ = ["SAMPLERS", "Denoiser", "clear_graphs", "ddim_invert", "sample",
           "sample_ald", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "sample_euler",
           "sample_heun", "sample_colorize", "sample_ode", "sample_pc", "sgld", "sgld_step_sizes"]

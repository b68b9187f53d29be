"""Every sampler as a plain function ``sample_<name>(model, x_T, process, *, steps, seed, ...)``
over the fused ops; ``pydiffuse.sample`` is the front door and ``SAMPLERS`` (name -> ``Sampler``:
the function, its paper, processes, order, ...) the registry every caller reads.

- ddpm: ancestral (Ho et al. 2020; iDDPM variances and respacing)
- ddim: DDIM with any eta, and ``ddim_invert`` (Song, Meng & Ermon 2021)
- ald: annealed Langevin dynamics (NCSN, NCSNv2)
- pc: predictor-corrector for score SDEs, masked for inpainting/colorization (Song et al. 2021)
- ode: the probability-flow ODE (Euler, Heun, adaptive RK45)
- euler, heun, dpm_2: EDM's samplers with churn (Karras et al. 2022); dpmpp_2m: DPM-Solver++(2M)
- ancestral: euler_ancestral, dpm_2_ancestral, dpmpp_2s_ancestral, dpmpp_sde (k-diffusion's)
- dpm_solver: dpm_fast, dpm_adaptive (DPM-Solver-1/2/3 steps, k-diffusion's step choices)
- multistep: lms, dpmpp_2m_sde, dpmpp_3m_sde (k-diffusion's); unipc (UniPC-bh2), deis (DEIS tAB)
- sgld: stochastic gradient Langevin dynamics for Bayesian posteriors (Welling & Teh 2011)

``sample_to_npz`` draws n samples split over the ranks of a ``torchrun`` run into one ``.npz``.

A sampler module registers its function with ``@register(name, ...)`` (``registry.py``); this
package imports each of its modules below, so a new module's sampler is in ``SAMPLERS``,
``pydiffuse.sample`` and the command line, and exported here as ``sample_<name>``, with no
other file touched.
"""

import importlib
import pkgutil

from ..nn.denoiser import Denoiser
from .api import sample
from .cuda_graph import clear_graphs
from .ddim import ddim_invert
from .distributed import sample_to_npz
from .pc import sample_colorize
from .registry import SAMPLERS, Sampler, register
from .sgld import sgld, sgld_step_sizes

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")      # each registers its samplers
_entries = sorted(SAMPLERS.items())               # alphabetical, whatever the import order
SAMPLERS.clear()
SAMPLERS.update(_entries)
globals().update({entry.fn.__name__: entry.fn for entry in SAMPLERS.values()})
del _module, _entries

__all__ = ["SAMPLERS", "Denoiser", "Sampler", "clear_graphs", "ddim_invert", "register", "sample",
           "sample_colorize", "sample_to_npz", "sgld", "sgld_step_sizes",
           *sorted(entry.fn.__name__ for entry in SAMPLERS.values())]

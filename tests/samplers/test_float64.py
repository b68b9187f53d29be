"""float64 end to end (issue 17, item 5): every sampler runs a float64 ``pydiffuse.sample`` on
the default backend with its model seeing float64 x and continuous times, and the adaptive
probability-flow sampler equals score_sde's loop on scipy's RK45 to 1e-10. (The fixed-step
samplers' float64 agreement with their reference loops to 1e-10: ``test_plain_loops.py``,
``test_kdiffusion.py``, ``test_dpm_solver.py``, ``test_unipc_deis.py``.)"""

import pytest
import torch

import pydiffuse
from pydiffuse import sde
from pydiffuse.samplers import SAMPLERS

from .oracle_cases import mixture_2d
from .test_edm import PROCESSES

BY_KIND = {"discrete": "linear", "sde": "vp", "ladder": "ladder"}


def process_for(name):
    kinds = SAMPLERS[name].processes
    return PROCESSES[BY_KIND["discrete" if "discrete" in kinds else kinds[0]]]()


class Checked(torch.nn.Module):
    """The mixture's exact prediction, asserting the dtypes it is given."""

    def __init__(self, process, prediction, dtype):
        super().__init__()
        self.mix, self.dtype, self.seen = mixture_2d(process, prediction), dtype, set()

    def forward(self, x, t):
        self.seen.add((x.dtype, t.dtype))
        assert x.dtype == self.dtype and (not t.is_floating_point() or t.dtype == self.dtype)
        return self.mix(x, t)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_runs_in_float64(name):
    """float64 on the default backend of the CPU, the model's inputs float64; the same run in
    float32 agrees to float32's rounding, amplified by the run (a wrong float64 path is off by
    far more: the samples are of scale 1; measured at most 2e-4 for the fixed-step samplers)."""
    process = process_for(name)
    prediction = "score" if name == "ald" else "eps"
    runs = {}
    for dtype in (torch.float32, torch.float64):
        model = Checked(process, prediction, dtype)
        runs[dtype] = pydiffuse.sample(model, (16, 2), process=process, sampler=name, seed=3,
                                       dtype=dtype, prediction=prediction,
                                       **SAMPLERS[name].quick)
        assert runs[dtype].dtype == dtype and model.seen
    assert bool(torch.isfinite(runs[torch.float64]).all())
    # an adaptive run's step choices differ with the rounding: agreement to its tolerance
    tol = 5e-2 if SAMPLERS[name].is_adaptive(SAMPLERS[name].quick) else 1e-3
    torch.testing.assert_close(runs[torch.float32].double(), runs[torch.float64], rtol=tol,
                               atol=tol)


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_rk45_equals_the_score_sde_loop_on_scipy(prediction):
    """score_sde's ODE sampler solves the probability flow with scipy's solve_ivp RK45 from
    t = 1 to eps; pydiffuse's RK45 steps each sample on its own, so each sample solved alone
    by scipy is its reference: equal to 1e-10 in float64 (without the final denoising step)."""
    integrate = pytest.importorskip("scipy.integrate")
    process = sde.VPSDE()
    mix, exact_score = mixture_2d(process, prediction), mixture_2d(process, "score")
    x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = SAMPLERS["ode"](mix, x_T, process, method="rk45", rtol=1e-6, atol=1e-6,
                           denoise=False, prediction=prediction)

    def drift(t, y):                     # f(t) x - g(t)^2 s(x, t) / 2 for one sample
        t = torch.tensor([t], dtype=torch.float64)
        x = torch.tensor(y, dtype=torch.float64)[None]
        score = exact_score(x, t)
        return (process.drift_coef(t) * x - 0.5 * process.diffusion(t) ** 2 * score)[0].tolist()

    for i in range(len(x_T)):
        sol = integrate.solve_ivp(drift, (process.T, process.sampling_eps), x_T[i].tolist(),
                                  method="RK45", rtol=1e-6, atol=1e-6)
        theirs = torch.tensor(sol.y[:, -1], dtype=torch.float64)
        torch.testing.assert_close(ours[i], theirs, rtol=1e-10, atol=1e-10)

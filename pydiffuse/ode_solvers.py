"""The adaptive Dormand-Prince 5(4) pieces that the probability-flow sampler
(``pydiffuse.samplers.ode``, fused float32 stages) and the likelihood's float64 integrator
(``pydiffuse.likelihood.dopri5``) share: the Butcher tableau, the per-sample step-size
controller and the last part of Hairer's starting-step rule. Below both (no pydiffuse
imports), so neither imports the other."""

import torch

# Dormand-Prince 5(4) (Dormand & Prince 1980): nodes c, stage weights a (the last row is b, the
# 5th-order solution, so the last stage is f at the new point: first-same-as-last), e = b - b*.
DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DP_A = ((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0


def controlled_step(t, h, norm, retry, end):
    """Dormand-Prince step-size control per sample (Hairer, Norsett & Wanner, I, II.4): accept
    where the error norm <= 1 (t += h, landing exactly on ``end``), then h *= clamp(0.9
    norm^(-1/5), 0.2, 10), not growing right after a rejection (``retry``). Returns (t, h, ok)."""
    ok = norm <= 1
    t = torch.where(ok, torch.where(h == end - t, end, t + h), t)
    factor = (SAFETY * norm ** -0.2).clamp(MIN_FACTOR, MAX_FACTOR)
    return t, h * torch.where(ok & retry, factor.clamp(max=1.0), factor), ok


def initial_step_from_norms(h0, d1, d2, span):
    """The last part of Hairer's starting step: h1 = (0.01 / max(d1, d2))^(1/5) from the scaled
    norms d1 = |f| and d2 = |f(y + h0 f) - f| / h0, and h = min(100 h0, h1, span), per sample."""
    top = torch.maximum(d1, d2)
    h1 = torch.where(top <= 1e-15, (h0 * 1e-3).clamp(min=1e-6), (0.01 / top) ** 0.2)
    return torch.minimum(torch.minimum(100 * h0, h1), span)

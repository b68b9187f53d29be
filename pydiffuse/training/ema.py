"""Exponential moving averages of a model's weights, at one or more rates."""

import copy

import torch


class EMA:
    """Shadow copies of a model's parameters, each updated after every optimizer step as

        theta_ema <- rate * theta_ema + (1 - rate) * theta

    (DDPM and the score-SDE papers sample from the EMA weights, rate 0.9999 / 0.999). Buffers
    (e.g. norm statistics) are copied as they are, not averaged.

    Args:
        model: the model being trained (the unwrapped module under DDP).
        rates: one or more decay rates in [0, 1).
    """

    def __init__(self, model: torch.nn.Module, rates=(0.9999,)):
        rates = tuple(float(r) for r in ((rates,) if isinstance(rates, (int, float)) else rates))
        if not rates or any(not 0.0 <= r < 1.0 for r in rates) or len(set(rates)) != len(rates):
            raise ValueError(f"ema rates must be distinct numbers in [0, 1), got {rates!r}")
        self.rates = rates
        self.names = [n for n, p in model.named_parameters() if p.dtype.is_floating_point]
        params = dict(model.named_parameters())
        self.shadows = {r: [params[n].detach().clone() for n in self.names] for r in rates}
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        """One EMA step toward the model's current parameters."""
        params = dict(model.named_parameters())
        current = [params[n].detach() for n in self.names]
        for rate, shadow in self.shadows.items():
            torch._foreach_lerp_(shadow, current, 1.0 - rate)
        self.num_updates += 1

    def state_dict(self, model: torch.nn.Module, rate: float) -> dict:
        """The model's state dict with the EMA parameters of ``rate`` in place of its own."""
        state = dict(model.state_dict())
        state.update(zip(self.names, self.shadows[self._rate(rate)]))
        return state

    def load_state_dict(self, rate: float, state: dict):
        """Set the shadow of ``rate`` from a state dict (as saved by ``state_dict``)."""
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"EMA state for rate {rate} lacks parameters {missing[:5]}")
        with torch.no_grad():
            for shadow, name in zip(self.shadows[self._rate(rate)], self.names):
                shadow.copy_(state[name])

    def model(self, model: torch.nn.Module, rate: float) -> torch.nn.Module:
        """A copy of ``model`` holding the EMA weights of ``rate``, in eval mode, frozen."""
        ema = copy.deepcopy(model)
        ema.load_state_dict(self.state_dict(model, rate))
        for p in ema.parameters():
            p.grad = None
            p.requires_grad_(False)
        return ema.eval()

    def _rate(self, rate) -> float:
        if rate is None:
            return self.rates[0]
        if float(rate) not in self.shadows:
            raise KeyError(f"no EMA at rate {rate}; the rates are {list(self.rates)}")
        return float(rate)

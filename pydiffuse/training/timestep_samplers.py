"""Which timesteps a discrete-diffusion objective trains on (improved-diffusion's resample.py).

A sampler draws positions t with probabilities p_t and weights 1 / (T p_t), so the weighted
loss is an unbiased estimate of the uniform-time objective; ``update`` feeds back each example's
loss; ``state_dict`` / ``load_state_dict`` let the trainer checkpoint the loss history.
"""

import torch
import torch.distributed as dist


class UniformSampler:
    """p_t = 1 / T: positions uniform, every weight 1."""

    def __init__(self, num_timesteps: int):
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.num_timesteps = int(num_timesteps)

    def weights(self) -> torch.Tensor:
        """Unnormalized p_t, float64 [T]."""
        return torch.ones(self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int):
        """(positions [B] long, weights 1 / (T p_t) [B] float32), on the host."""
        return torch.randint(self.num_timesteps, (batch_size,)), torch.ones(batch_size)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record each example's (unweighted) loss at its position t."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class LossSecondMomentSampler(UniformSampler):
    """Importance sampling of iDDPM (Nichol & Dhariwal 2021, sec. 3.3): p_t proportional to
    sqrt(E[L_t^2]) over the last ``history`` losses of each t, uniform until every t has
    ``history`` of them, mixed with ``uniform_prob`` of uniform; weights 1 / (T p_t).

    Under ``torch.distributed`` the losses of every rank are gathered (in rank order) before the
    update, so all ranks keep one history.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if history < 1 or not 0 <= uniform_prob <= 1:
            raise ValueError(f"need history >= 1 and uniform_prob in [0, 1], got {history}, "
                             f"{uniform_prob}")
        self.history, self.uniform_prob = int(history), float(uniform_prob)
        self.losses = torch.zeros(self.num_timesteps, self.history, dtype=torch.float64)
        self.counts = torch.zeros(self.num_timesteps, dtype=torch.long)

    @property
    def warmed_up(self) -> bool:
        return bool((self.counts == self.history).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up:
            return super().weights()
        w = self.losses.pow(2).mean(1).sqrt()
        w = w / w.sum() * (1 - self.uniform_prob)
        return w + self.uniform_prob / self.num_timesteps

    def sample(self, batch_size: int):
        if not self.warmed_up:
            return super().sample(batch_size)
        p = self.weights()
        p = p / p.sum()
        t = torch.multinomial(p, batch_size, replacement=True)
        return t, (1 / (self.num_timesteps * p[t])).float()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        t, losses = t.detach().reshape(-1), losses.detach().reshape(-1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t, losses = _gather_ranks(t, losses)
        for i, loss in zip(t.cpu().tolist(), losses.double().cpu().tolist()):
            if self.counts[i] == self.history:          # drop the oldest, keep the order
                self.losses[i, :-1] = self.losses[i, 1:].clone()
                self.losses[i, -1] = loss
            else:
                self.losses[i, self.counts[i]] = loss
                self.counts[i] += 1

    def state_dict(self) -> dict:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        if not {"losses", "counts"} <= set(state):
            raise ValueError(f"a loss-history state needs 'losses' and 'counts', got keys "
                             f"{sorted(state)}")
        losses, counts = state["losses"], state["counts"]
        if losses.shape != self.losses.shape or counts.shape != self.counts.shape:
            raise ValueError(f"a loss history of shape {list(losses.shape)} does not fit "
                             f"{list(self.losses.shape)} (num_timesteps, history)")
        self.losses = losses.to(torch.float64).cpu().clone()
        self.counts = counts.to(torch.long).cpu().clone()


def _gather_ranks(*tensors):
    """Each [n_rank] tensor concatenated over the ranks in rank order (sizes may differ)."""
    world, device = dist.get_world_size(), tensors[0].device
    size = torch.tensor([len(tensors[0])], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    out = []
    for x in tensors:
        padded = torch.zeros(max(sizes), dtype=x.dtype, device=device)
        padded[:len(x)] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:n] for p, n in zip(parts, sizes)]))
    return out


SAMPLERS = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentSampler}


def make_timestep_sampler(spec, num_timesteps: int):
    """A sampler by name ("uniform", "loss-second-moment") or a sampler object as it is."""
    if isinstance(spec, str):
        if spec not in SAMPLERS:
            raise ValueError(f"timestep_sampler must be one of {sorted(SAMPLERS)} or a sampler "
                             f"object, got {spec!r}")
        return SAMPLERS[spec](num_timesteps)
    if not all(hasattr(spec, m) for m in ("sample", "update", "state_dict")):
        raise TypeError(f"timestep_sampler must be a name or have sample/update/state_dict, got "
                        f"{type(spec).__name__}")
    if spec.num_timesteps != num_timesteps:
        raise ValueError(f"the timestep sampler covers {spec.num_timesteps} steps, the schedule "
                         f"{num_timesteps}")
    return spec

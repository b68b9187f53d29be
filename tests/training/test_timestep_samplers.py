"""The timestep samplers: uniform, and iDDPM's loss-second-moment importance sampler (uniform
until 10 losses per t, then p_t proportional to sqrt(E[L_t^2]) mixed with 0.001 uniform, weights
1 / (T p_t)), its history and its checkpoint state."""

import io

import pytest
import torch

from pydiffuse.training import LossSecondMomentSampler, UniformSampler, make_timestep_sampler

T = 6


def fill(sampler, rounds, loss_of_t=lambda t: t + 1.0):
    """``rounds`` losses for every t, loss_of_t(t) each."""
    t = torch.arange(T).repeat(rounds)
    sampler.update(t, torch.tensor([loss_of_t(i) for i in t.tolist()]))


def test_uniform_sampler():
    torch.manual_seed(0)
    t, w = UniformSampler(T).sample(60000)
    assert t.dtype == torch.long and torch.equal(w, torch.ones(60000))
    freq = torch.bincount(t, minlength=T) / 60000
    assert (freq - 1 / T).abs().max() < 0.01


def test_uniform_until_every_t_has_its_history():
    s = LossSecondMomentSampler(T)
    fill(s, 9)
    s.update(torch.arange(T - 1), torch.ones(T - 1))    # the last t still has 9 losses
    assert not s.warmed_up
    assert torch.equal(s.weights(), torch.ones(T, dtype=torch.float64))
    torch.manual_seed(0)
    _, w = s.sample(100)
    assert torch.equal(w, torch.ones(100))
    s.update(torch.tensor([T - 1]), torch.ones(1))
    assert s.warmed_up


def test_importance_weights_exact():
    s = LossSecondMomentSampler(T)
    fill(s, 10, lambda t: t + 1.0)              # E[L_t^2] = (t + 1)^2
    expect = torch.arange(1, T + 1, dtype=torch.float64)
    expect = expect / expect.sum() * (1 - 0.001) + 0.001 / T
    torch.testing.assert_close(s.weights(), expect, rtol=1e-12, atol=0)
    torch.manual_seed(0)
    t, w = s.sample(200000)
    p = expect / expect.sum()
    torch.testing.assert_close(w, (1 / (T * p[t])).float())
    freq = torch.bincount(t, minlength=T).double() / len(t)
    assert (freq - p).abs().max() < 0.005
    # the weighted mean of a per-t quantity is unbiased for its uniform mean
    f = torch.arange(T, dtype=torch.float64) ** 2
    assert abs(float((w.double() * f[t]).mean()) - float(f.mean())) < 0.05 * float(f.mean())


def test_second_moment_not_mean():
    s = LossSecondMomentSampler(2, history=2, uniform_prob=0.0)
    s.update(torch.tensor([0, 0, 1, 1]), torch.tensor([3.0, 4.0, -5.0, 5.0]))
    # sqrt((9 + 16) / 2) : sqrt((25 + 25) / 2)
    a, b = 12.5 ** 0.5, 25 ** 0.5
    torch.testing.assert_close(s.weights(), torch.tensor([a, b], dtype=torch.float64) / (a + b))


def test_history_keeps_the_last_losses_in_order():
    s = LossSecondMomentSampler(T, history=3)
    s.update(torch.tensor([2, 2, 2, 2, 2]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert s.counts[2] == 3
    assert s.losses[2].tolist() == [3.0, 4.0, 5.0]
    assert s.counts.sum() == 3


def test_state_round_trip():
    s = LossSecondMomentSampler(T)
    fill(s, 12, lambda t: (t + 1.0) ** 0.5)
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    r = LossSecondMomentSampler(T)
    r.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(r.weights(), s.weights())
    torch.manual_seed(3)
    a = s.sample(50)
    torch.manual_seed(3)
    b = r.sample(50)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="does not fit"):
        LossSecondMomentSampler(T + 1).load_state_dict(s.state_dict())


def test_make_timestep_sampler():
    assert isinstance(make_timestep_sampler("uniform", T), UniformSampler)
    assert isinstance(make_timestep_sampler("loss-second-moment", T), LossSecondMomentSampler)
    s = LossSecondMomentSampler(T)
    assert make_timestep_sampler(s, T) is s
    with pytest.raises(ValueError, match="covers"):
        make_timestep_sampler(s, T + 1)
    with pytest.raises(ValueError, match="timestep_sampler"):
        make_timestep_sampler("importance", T)


def _ranks_update(rank, world, init, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    s = LossSecondMomentSampler(T, history=3)
    n = 5 if rank == 0 else 3                       # ranks may hold different batch sizes
    s.update(torch.arange(n) % T, torch.full((n,), 10.0 * rank) + torch.arange(n))
    torch.save(s.state_dict(), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_distributed_update_gathers_every_rank(tmp_path):
    """Under torch.distributed every rank records all ranks' losses, in rank order: the
    history of one process fed the concatenated batch."""
    import torch.multiprocessing as mp
    mp.spawn(_ranks_update, args=(2, f"file://{tmp_path}/init", str(tmp_path)), nprocs=2)
    single = LossSecondMomentSampler(T, history=3)
    single.update(torch.cat([torch.arange(5) % T, torch.arange(3) % T]),
                  torch.cat([torch.arange(5.0), 10 + torch.arange(3.0)]))
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(state["losses"], single.losses)
        assert torch.equal(state["counts"], single.counts)

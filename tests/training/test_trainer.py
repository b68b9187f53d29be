"""The Trainer on a tiny MLP with DDPM's simple loss (written here, so these tests do not depend on
the library's objectives): it learns; resume is exact to the bit (after a clean stop, a
KeyboardInterrupt, or from an older checkpoint); the NaN guard skips; warm-up, clipping, EMA,
autocast and the per-quartile log do what they say."""

import json
import logging
import math

import pytest
import torch
from torch.utils.data import Dataset

from pydiffuse import schedules
from pydiffuse.data import moons
from pydiffuse.training import DDPMLoss
from pydiffuse.training.checkpoint import checkpoints, load_checkpoint
from pydiffuse.training.ema import EMA
from pydiffuse.training.trainer import (
    STEP_STREAM,
    Trainer,
    mix_seed,
    seed_all,
    seeded_init,
)

T = 100


class TinyMLP(torch.nn.Module):
    """eps(x, t) for 2-D points: an MLP on (x, t / T)."""

    def __init__(self, dim: int = 2, hidden: int = 32):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, dim))

    def forward(self, x, t, y=None):
        return self.net(torch.cat([x, (t.to(x.dtype) / T)[:, None]], 1))


class SimpleDDPM:
    """DDPM's L_simple = ||eps - eps_theta(sqrt(abar_t) x + sqrt(1 - abar_t) eps, t)||^2 on a
    linear beta schedule of T steps; t and eps from torch's global RNG (the trainer seeds it)."""

    def __init__(self):
        betas = torch.linspace(1e-4, 0.2, T, dtype=torch.float64)
        self.abar = torch.cumprod(1 - betas, 0)

    def __call__(self, model, batch):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        t = torch.randint(T, (len(x),))
        eps = torch.randn_like(x)
        a, s = (c.to(x.dtype)[:, None] for c in (self.abar[t].sqrt(), (1 - self.abar[t]).sqrt()))
        per = ((model(a * x + s * eps, t) - eps) ** 2).mean(1)
        return {"loss": per.mean(), "per_example": per.detach().float(), "t": t.float() / T}


class Interrupting:
    """``inner``, but a KeyboardInterrupt right after its call number ``at`` (0-based): a Ctrl-C
    mid-step, after the objective has drawn its noise and updated any loss history."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.calls = inner, at, 0

    def __call__(self, model, batch):
        out = self.inner(model, batch)
        self.calls += 1
        if self.calls - 1 == self.at:
            raise KeyboardInterrupt
        return out

    def __getattr__(self, name):                # state_dict / load_state_dict, if inner has them
        return getattr(self.inner, name)


def importance_sampled():
    """The library's DDPM loss with iDDPM's loss-aware timesteps: an objective with state (T = 20
    so its loss history fills up within these tests' steps)."""
    return DDPMLoss(schedules.linear(20), timestep_sampler="loss-second-moment")


class NaNAt(SimpleDDPM):
    """A NaN loss on the given call numbers."""

    def __init__(self, steps):
        super().__init__()
        self.steps, self.calls = set(steps), 0

    def __call__(self, model, batch):
        out = super().__call__(model, batch)
        if self.calls in self.steps:
            out["loss"] = out["loss"] * math.nan
        self.calls += 1
        return out


class ListDataset(Dataset):
    """The same points as a TensorDataset, through the DataLoader path."""

    def __init__(self, tensor_dataset):
        self.x = tensor_dataset.tensors[0]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def make_trainer(run_dir, objective=None, data=None, **kwargs):
    torch.manual_seed(0)
    options = {"batch_size": 64, "lr": 3e-3, "warmup": 5, "ema_rates": (0.9, 0.99), "log_every": 5,
                   "progress": False}
    return Trainer(TinyMLP(), objective if objective is not None else SimpleDDPM(),
                   data if data is not None else moons(500, seed=1),
                   run_dir=run_dir, **{**options, **kwargs})


def weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


def test_loss_decreases(tmp_path):
    history = make_trainer(tmp_path, lr=1e-2).train(300)
    first, last = sum(history[:30]) / 30, sum(history[-30:]) / 30
    assert last < 0.75 * first, (first, last)


@pytest.mark.parametrize("how, objective", [("stop", SimpleDDPM), ("interrupt", SimpleDDPM),
                                            ("older", SimpleDDPM),
                                            ("interrupt", importance_sampled)])
def test_resume_is_exact(tmp_path, how, objective):
    k, total = 13, 30             # k off the logging interval (5): the window resumes too
    straight = make_trainer(tmp_path / "straight", objective=objective())
    straight.train(total)

    run = tmp_path / "resumed"
    if how == "stop":
        make_trainer(run, objective=objective()).train(k)
        resume = True
    elif how == "interrupt":                  # killed during step k: step k's checkpoint
        with pytest.raises(KeyboardInterrupt):
            make_trainer(run, objective=Interrupting(objective(), at=k)).train(total)
        assert [p.name for p in checkpoints(run)] == [f"step_{k:07d}"]
        resume = True
    else:                                       # run past k, resume from the checkpoint at k
        make_trainer(run, objective=objective(), save_every=k, keep=5).train(k + 7)
        resume = run / f"step_{k:07d}"
    resumed = make_trainer(run, objective=objective(), resume=resume)
    assert resumed.step == k and len(resumed.history) == k
    resumed.train(total)

    assert resumed.history == straight.history          # bit-equal losses, step by step
    assert_same(weights(resumed.model), weights(straight.model))
    for rate in (0.9, 0.99):
        assert_same(weights(resumed.ema_model(rate)), weights(straight.ema_model(rate)))
    logs = [[json.loads(ln)["loss"] for ln in (d / "log.jsonl").read_text().splitlines()]
            for d in (tmp_path / "straight", run)]
    assert logs[0] == logs[1] and len(logs[0]) == total // 5
    state = getattr(straight.objective, "state_dict", dict)()
    for key, value in state.get("timestep_sampler", {}).items():     # the loss history too
        assert torch.equal(value, resumed.objective.state_dict()["timestep_sampler"][key]), key


def test_dataloader_path_matches_tensor_path(tmp_path):
    data = moons(500, seed=1)
    fast = make_trainer(tmp_path / "a", data=data).train(12)
    loader = make_trainer(tmp_path / "b", data=ListDataset(data)).train(12)
    assert fast == loader


def test_nan_guard_skips_the_step(tmp_path, caplog):
    trainer = make_trainer(tmp_path, objective=NaNAt({2, 4}))
    trainer.train(2)
    before, ema_before = weights(trainer.model), weights(trainer.ema_model(0.9))
    with caplog.at_level(logging.WARNING, logger="pydiffuse.training"):
        trainer.train(3)
    assert_same(weights(trainer.model), before)                  # step 2 was skipped
    assert_same(weights(trainer.ema_model(0.9)), ema_before)
    trainer.train(6)
    assert trainer.skipped == 2
    assert [i for i, v in enumerate(trainer.history) if math.isnan(v)] == [2, 4]
    assert all(math.isfinite(v) for p in trainer.model.parameters() for v in p.flatten().tolist())
    messages = [r.getMessage() for r in caplog.records]
    assert any("step 2" in m and "skipped" in m for m in messages), messages


@pytest.mark.parametrize("warmup", [0, 10])
def test_warmup_sets_the_first_step_size(tmp_path, warmup):
    # Adam's first step moves each parameter by lr * g / (|g| + eps) ~ lr.
    trainer = make_trainer(tmp_path, lr=1e-2, warmup=warmup, eps=1e-12)
    before = weights(trainer.model)
    trainer.train(1)
    moved = max((trainer.model.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    assert moved == pytest.approx(trainer.lr_at(0), rel=1e-4)
    assert trainer.lr_at(0) == (1e-3 if warmup else 1e-2) and trainer.lr_at(9) == 1e-2


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_gradient_clipping(tmp_path, clip):
    trainer = make_trainer(tmp_path, grad_clip=clip, log_every=1)
    trainer.train(1)
    logged = json.loads((tmp_path / "log.jsonl").read_text())["grad_norm"]
    kept = torch.cat([p.grad.flatten() for p in trainer.model.parameters()]).norm().item()
    assert logged > 1e-2
    assert kept == pytest.approx(logged if clip is None else clip, rel=1e-4)


def test_ema_formula():
    model = torch.nn.Linear(1, 1, bias=False).double()
    values = [2.0, -1.0, 5.0]
    with torch.no_grad():
        model.weight.fill_(values[0])
    ema = EMA(model, (0.5, 0.9))
    for v in values[1:]:
        with torch.no_grad():
            model.weight.fill_(v)
        ema.update(model)
    for r in (0.5, 0.9):
        expected = r * r * values[0] + r * (1 - r) * values[1] + (1 - r) * values[2]
        copy = ema.model(model, r)
        assert copy.weight.item() == pytest.approx(expected, rel=1e-12)
        assert not copy.weight.requires_grad and not copy.training
    assert model.weight.item() == 5.0 and ema.num_updates == 2
    with pytest.raises(KeyError, match="0.99"):
        ema.model(model, 0.99)
    with pytest.raises(ValueError, match="rates"):
        EMA(model, (1.0,))


@pytest.mark.parametrize("amp", [None, "bf16", "fp16"])
def test_autocast(tmp_path, amp):
    seen = []

    def objective(model, batch):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        out = SimpleDDPM()(model, batch)
        return out

    trainer = make_trainer(tmp_path, objective=objective, amp=amp)
    history = trainer.train(4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    assert all(enabled == (amp is not None) for enabled, _ in seen)
    if amp:
        assert all(d == dtype for _, d in seen)
    assert (trainer.scaler is not None) == (amp == "fp16")
    assert all(math.isfinite(v) for v in history)


def test_loss_per_timestep_quartile(tmp_path):
    def objective(model, batch):
        t = torch.rand(len(batch))
        zero = sum(p.sum() for p in model.parameters()) * 0
        return {"loss": t.mean() + zero, "per_example": t, "t": t}

    trainer = make_trainer(tmp_path, objective=objective, batch_size=256, log_every=4)
    trainer.train(8)
    lines = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 8]
    for r, window in zip(lines, (trainer.history[:4], trainer.history[4:])):
        assert r["loss"] == pytest.approx(sum(window) / 4, rel=1e-9)
        for q in range(4):          # the mean of t over its quartile: near its midpoint
            assert q / 4 < r[f"loss_q{q + 1}"] < (q + 1) / 4
            assert r[f"loss_q{q + 1}"] == pytest.approx((q + 0.5) / 4, abs=0.02)


def test_checkpoints_on_schedule(tmp_path):
    trainer = make_trainer(tmp_path, save_every=4, keep=2,
                           config={"model": "tiny-mlp", "prediction": "eps"})
    trainer.train(10)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_0000008", "step_0000010"]
    ckpt = load_checkpoint(tmp_path / "step_0000010")
    assert ckpt["config"]["model"] == "tiny-mlp" and ckpt["config"]["step"] == 10
    assert ckpt["config"]["trainer"]["ema_rates"] == [0.9, 0.99]
    assert sorted(ckpt["ema"]) == [0.9, 0.99]
    assert ckpt["state"]["history"].tolist() == trainer.history
    assert_same(ckpt["model"], weights(trainer.model))
    assert_same(ckpt["ema"][0.99], weights(trainer.ema_model(0.99)))


def test_cosine_lr_decay(tmp_path):
    # lr * 1/2 (1 + cos(pi u)), u = (step - start) / (stop - start) clipped to [0, 1]
    trainer = make_trainer(tmp_path, lr=1e-2, warmup=0, lr_decay=[10, 30])
    assert trainer.lr_at(0) == trainer.lr_at(10) == 1e-2
    assert trainer.lr_at(20) == pytest.approx(5e-3, rel=1e-12)
    assert trainer.lr_at(15) == pytest.approx(1e-2 * (0.5 + 0.5 * math.cos(math.pi / 4)))
    assert trainer.lr_at(30) == trainer.lr_at(99) == 0.0
    trainer.train(21)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    before = weights(trainer.model)
    trainer.train(40)                          # steps 30..39 at lr 0: nothing moves after 30
    after30 = weights(trainer.model)
    trainer.train(45)
    assert_same(after30, weights(trainer.model))
    assert any(not torch.equal(v, after30[k]) for k, v in before.items())


@pytest.mark.parametrize("bad", [{"optimizer": "sgd"}, {"amp": "fp8"}, {"grad_clip": 0.0},
                                 {"log_every": 0}, {"warmup": -1}, {"lr_decay": [5, 5]},
                                 {"lr_decay": 10}, {"batch_size": 64,
                                 "data": torch.utils.data.TensorDataset(torch.zeros(0, 2))}])
def test_bad_arguments(tmp_path, bad):
    with pytest.raises(ValueError):
        make_trainer(tmp_path, **bad)


# -- a fresh run's initial weights; a run directory that already holds a run ------------------


def test_seeded_init_is_reproducible_and_leaves_the_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with seeded_init(7):
        a = TinyMLP()
    assert torch.equal(torch.get_rng_state(), state)            # the caller's RNG: untouched
    torch.manual_seed(456)
    with seeded_init(7):
        b = TinyMLP()
    with seeded_init(8):
        c = TinyMLP()
    assert_same(weights(a), weights(b))
    assert any(not torch.equal(v, weights(c)[k]) for k, v in weights(a).items())
    seed_all(mix_seed(7, STEP_STREAM, 0, 0))                     # not step 0's stream
    d = TinyMLP()
    assert any(not torch.equal(v, weights(d)[k]) for k, v in weights(a).items())


def snapshot(run_dir) -> dict:
    """Every file under run_dir: {relative path: bytes}."""
    return {str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def old_run(run_dir):
    """A finished run with more steps than the new ones of these tests: steps 10, 15, 20."""
    make_trainer(run_dir, lr=1e-2, save_every=5, keep=3).train(20)
    assert [p.name for p in checkpoints(run_dir)] == [f"step_{s:07d}" for s in (10, 15, 20)]
    return snapshot(run_dir)


def logged_steps(run_dir) -> list:
    return [json.loads(ln)["step"] for ln in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("holds", ["checkpoints", "log only"])
def test_fresh_run_into_a_used_run_dir_is_refused(tmp_path, holds):
    if holds == "checkpoints":
        before = old_run(tmp_path)
    else:                       # a run killed before its first checkpoint left only a log
        (tmp_path / "log.jsonl").write_text('{"step": 5, "loss": 1.0}\n')
        before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="--resume.*--overwrite") as err:
        make_trainer(tmp_path).train(3)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)
    assert snapshot(tmp_path) == before
    with pytest.raises(ValueError, match="exclude each other"):
        make_trainer(tmp_path, resume=True, overwrite=True)


def test_fresh_run_into_an_empty_or_new_run_dir(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "log.jsonl").write_text("")
    make_trainer(tmp_path / "a").train(5)
    make_trainer(tmp_path / "b", overwrite=True).train(5)      # nothing to replace
    trainer = make_trainer(tmp_path / "c", resume=True)         # nothing to resume: fresh
    assert trainer.step == 0
    trainer.train(5)
    for d in "abc":
        assert [p.name for p in checkpoints(tmp_path / d)] == ["step_0000005"]
        assert logged_steps(tmp_path / d) == [5]


class Watching:
    """``inner``, recording at each call (a step, before its update) the run directory's
    checkpoints and logged steps, then raising ``error`` at call number ``fail_at``."""

    def __init__(self, inner, run_dir, fail_at=None, error=RuntimeError):
        self.inner, self.run_dir, self.fail_at, self.error = inner, run_dir, fail_at, error
        self.seen = []

    def __call__(self, model, batch):
        log = self.run_dir / "log.jsonl"
        self.seen.append(([p.name for p in checkpoints(self.run_dir)],
                          logged_steps(self.run_dir) if log.is_file() else []))
        if len(self.seen) - 1 == self.fail_at:
            raise self.error("boom")
        return self.inner(model, batch)


def test_overwrite_replaces_the_run_after_its_first_checkpoint(tmp_path):
    run = tmp_path / "run"
    old_run(run)
    old_steps = logged_steps(run)
    watch = Watching(SimpleDDPM(), run)
    new = make_trainer(run, objective=watch, overwrite=True, save_every=2, keep=1, log_every=1)
    new.train(7)
    old = [f"step_{s:07d}" for s in (10, 15, 20)]
    # steps 0, 1: the old run untouched (no new log line in the old log); at step 2 (after the
    # checkpoint at 2) only the new run, pruned to its newest checkpoint, never an old one
    assert watch.seen == [(old, old_steps), (old, old_steps),
                          (["step_0000002"], [1, 2]), (["step_0000002"], [1, 2, 3]),
                          (["step_0000004"], [1, 2, 3, 4]), (["step_0000004"], [1, 2, 3, 4, 5]),
                          (["step_0000006"], [1, 2, 3, 4, 5, 6])]
    assert [p.name for p in checkpoints(run)] == ["step_0000007"]
    assert logged_steps(run) == list(range(1, 8))
    assert sorted(p.name for p in run.iterdir()) == ["log.jsonl", "step_0000007"]
    # the same as a fresh run into an empty directory
    fresh = make_trainer(tmp_path / "fresh", save_every=2, keep=1, log_every=1)
    fresh.train(7)
    assert fresh.history == new.history
    assert_same(weights(fresh.model), load_checkpoint(run / "step_0000007")["model"])
    losses = [[json.loads(ln)["loss"] for ln in (d / "log.jsonl").read_text().splitlines()]
              for d in (run, tmp_path / "fresh")]
    assert losses[0] == losses[1]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_overwrite_crash_before_its_first_checkpoint_keeps_the_old_run(tmp_path, error):
    before = old_run(tmp_path)
    watch = Watching(SimpleDDPM(), tmp_path, fail_at=3, error=error)
    with pytest.raises(error):
        make_trainer(tmp_path, objective=watch, overwrite=True, save_every=5, log_every=1
                     ).train(7)
    assert snapshot(tmp_path) == before                 # every byte of the old run
    # a crash after the first checkpoint: the emergency checkpoint, the new run only
    watch = Watching(SimpleDDPM(), tmp_path, fail_at=3, error=error)
    with pytest.raises(error):
        make_trainer(tmp_path, objective=watch, overwrite=True, save_every=2, log_every=1,
                     keep=5).train(7)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_0000002", "step_0000003"]
    assert logged_steps(tmp_path) == [1, 2, 3]


def test_resume_from_an_older_checkpoint_keeps_the_new_one(tmp_path):
    make_trainer(tmp_path, save_every=5, keep=5).train(20)
    resumed = make_trainer(tmp_path, resume=tmp_path / "step_0000005", save_every=2, keep=1)
    resumed.train(8)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_0000008"]

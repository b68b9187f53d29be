"""Data parallelism: each rank reads a disjoint slice of each global batch; two CPU processes under
torchrun (gloo) end with the weights of one process on the full batch; distributed sampling
writes the same .npz from two ranks as from one.

Run as a script (``torchrun --nproc_per_node 2 tests/training/test_ddp.py OUT``), this file is
the worker that ``test_two_ranks_match_one`` launches.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pydiffuse import samplers, schedules
from pydiffuse.data import StepBatches
from pydiffuse.nn import GaussianMixtureScore
from pydiffuse.training import distributed
from pydiffuse.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from pydiffuse.training.trainer import Trainer
from tests.training.test_trainer import SimpleDDPM, T, TinyMLP

ROOT = Path(__file__).resolve().parents[2]
STEPS, BATCH, N = 6, 8, 20
NUM_SAMPLES, SAMPLE_BATCH = 12, 3


def fixed_noise_data() -> TensorDataset:
    """(x, eps, t, index): each example's noise and timestep drawn once, here."""
    gen = torch.Generator().manual_seed(5)
    return TensorDataset(torch.randn(N, 2, dtype=torch.float64, generator=gen),
                         torch.randn(N, 2, dtype=torch.float64, generator=gen),
                         torch.randint(T, (N,), generator=gen), torch.arange(N))


class FixedNoiseLoss(SimpleDDPM):
    """L_simple with the data's own eps and t: no RNG, so one process on the full batch and two
    on its halves compute one gradient (up to float summation order). Records the indices."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __call__(self, model, batch):
        x, eps, t, index = batch
        self.seen.append(index.tolist())
        a, s = self.abar[t].sqrt()[:, None], (1 - self.abar[t]).sqrt()[:, None]
        per = ((model(a * x + s * eps, t) - eps) ** 2).mean(1)
        return {"loss": per.mean(), "per_example": per.detach(), "t": t / T}


def train(run_dir, **kwargs) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(TinyMLP().double(), FixedNoiseLoss(), fixed_noise_data(), run_dir=run_dir,
                      batch_size=BATCH, lr=1e-2, warmup=2, grad_clip=0.5, ema_rates=(0.9,),
                      log_every=2, progress=False, **kwargs)
    trainer.train(STEPS)
    return trainer


class Conditional(torch.nn.Module):
    """The exact eps of a 2-D mixture, shifted by 0.1 y: a model whose samples show their label."""

    def __init__(self, process):
        super().__init__()
        self.mixture = GaussianMixtureScore([[-1.0, 0.0], [1.0, 0.5]], 0.2, process=process,
                                            prediction="eps")

    def forward(self, x, t, y=None):
        return self.mixture(x, t) + 0.1 * y.to(x.dtype)[:, None]


def draw(path) -> Path:
    process = schedules.linear(100)
    labels = torch.arange(NUM_SAMPLES) % 3
    return samplers.sample_to_npz(Conditional(process), NUM_SAMPLES, path, shape=(2,),
                                  process=process, batch_size=SAMPLE_BATCH, seed=7,
                                  labels=labels, null_label=3, guidance=1.5, sampler="ddim",
                                  steps=10, progress=False)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_step_batches_split_the_global_batch(world):
    n, batch, steps = 10, 4, 8
    whole = StepBatches(n, batch, seed=3, start=0, stop=steps)
    shards = [StepBatches(n, batch, 3, 0, steps, rank, world) for rank in range(world)]
    for step in range(steps):
        assert torch.equal(torch.cat([s.indices(step) for s in shards]), whole.indices(step))
    stream = torch.cat([whole.indices(s) for s in range(5)])        # 20 items: two epochs
    assert sorted(stream[:10].tolist()) == sorted(stream[10:].tolist()) == list(range(n))
    assert not torch.equal(stream[:10], stream[10:])
    assert list(StepBatches(n, batch, 3, 2, 4)) == [whole.indices(2).tolist(),
                                                     whole.indices(3).tolist()]


def test_shard_range():
    shares = [distributed.shard_range(7, r, 3) for r in range(3)]
    assert [list(s) for s in shares] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(distributed.shard_range(2, 3, 4)) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(worker: str, out: Path):
    """``torchrun --nproc_per_node 2 worker out`` on this machine's CPU (gloo); asserts success."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), worker, str(out)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def test_two_ranks_match_one(tmp_path):
    out = tmp_path / "ddp"
    old = out / "replaced"                      # a run the workers' second run overwrites
    save_checkpoint(old / "step_0000100", model=TinyMLP().double().state_dict(), emas={},
                    state={"step": 100}, config={})
    (old / "log.jsonl").write_text('{"step": 100, "loss": 1.0}\n')
    run_two_ranks(__file__, out)

    single = train(tmp_path / "single")
    ddp = load_checkpoint(latest_checkpoint(out / "run"))
    assert ddp["state"]["step"] == STEPS
    single_ema = single.ema.state_dict(single.model, 0.9)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=0, atol=1e-12)
        torch.testing.assert_close(ddp["ema"][0.9][k], single_ema[k], rtol=0, atol=1e-12)
    torch.testing.assert_close(ddp["state"]["history"],
                               torch.tensor(single.history, dtype=torch.float64),
                               rtol=1e-12, atol=0)
    ranks = [json.loads((out / f"seen{r}.json").read_text()) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == single.objective.seen     # disjoint halves

    ddp_samples = np.load(out / "samples.npz")
    one = np.load(draw(tmp_path / "one.npz"))
    assert ddp_samples["x"].shape == (NUM_SAMPLES, 2)
    np.testing.assert_array_equal(ddp_samples["x"], one["x"])
    np.testing.assert_array_equal(ddp_samples["y"], one["y"])
    assert sorted(p.name for p in out.iterdir()) == ["replaced", "run", "samples.npz",
                                                     "seen0.json", "seen1.json"]   # shards merged
    # overwrite under DDP: rank 0 alone replaced the old run, once its first checkpoint was saved
    assert sorted(p.name for p in old.iterdir()) == ["log.jsonl", f"step_{STEPS:07d}"]
    logs = [[{k: v for k, v in json.loads(ln).items() if k != "steps_per_s"}
             for ln in (d / "log.jsonl").read_text().splitlines()] for d in (old, out / "run")]
    assert logs[0] == logs[1] and [r["step"] for r in logs[0]] == [2, 4, 6]
    again = load_checkpoint(old / f"step_{STEPS:07d}")
    for k, v in ddp["model"].items():
        assert torch.equal(again["model"][k], v), k


if __name__ == "__main__":            # the torchrun worker
    target = Path(sys.argv[1])
    rank = distributed.setup().rank
    trainer = train(target / "run")
    (target / f"seen{rank}.json").write_text(json.dumps(trainer.objective.seen))
    train(target / "replaced", overwrite=True)
    draw(target / "samples.npz")
    distributed.teardown()

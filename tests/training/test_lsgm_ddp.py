"""LSGM under data parallelism: two CPU processes under torchrun (gloo) train the two parameter
groups across the VAE-only warm-up (where the prior's parameters get no gradient, so DDP must
be told to expect unused parameters) and end with one set of weights on both ranks, the one
rank 0 checkpoints.

Run as a script (``torchrun --nproc_per_node 2 tests/training/test_lsgm_ddp.py OUT``), this file
is the worker that ``test_lsgm_trains_on_two_ranks`` launches.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from pydiffuse.training import distributed
from pydiffuse.training.checkpoint import latest_checkpoint, load_checkpoint
from tests.training.test_ddp import _free_port
from tests.training.test_lsgm import run

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6                                   # the warm-up is 3 steps: both phases run


def test_lsgm_trains_on_two_ranks(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, str(out)]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    sums = [json.loads((out / f"weights{r}.json").read_text()) for r in range(2)]
    assert sums[0] == sums[1]                                    # the ranks agree
    ckpt = load_checkpoint(latest_checkpoint(out / "run"))
    assert ckpt["state"]["step"] == STEPS
    assert {k: float(v.double().sum()) for k, v in ckpt["model"].items()} == sums[0]
    history = ckpt["state"]["history"]
    assert len(history) == STEPS and torch.isfinite(history).all()


if __name__ == "__main__":            # the torchrun worker
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    rank = distributed.setup().rank
    trainer = run(target / "run", STEPS)
    sums = {k: float(v.double().sum()) for k, v in trainer.model.state_dict().items()}
    (target / f"weights{rank}.json").write_text(json.dumps(sums))
    distributed.teardown()

"""LSGM under data parallelism: two CPU processes under torchrun (gloo) train the two parameter
groups across the VAE-only warm-up (where the prior's parameters get no gradient, so DDP must
be told to expect unused parameters) and end with one set of weights on both ranks, the one
rank 0 checkpoints.

Run as a script (``torchrun --nproc_per_node 2 tests/training/test_lsgm_ddp.py OUT``), this file
is the worker that ``test_lsgm_trains_on_two_ranks`` launches.
"""

import json
import sys
from pathlib import Path

import torch

from pydiffuse.training import distributed
from pydiffuse.training.checkpoint import latest_checkpoint, load_checkpoint
from tests.training.test_ddp import run_two_ranks
from tests.training.test_lsgm import run

STEPS = 6                                   # the warm-up is 3 steps: both phases run


def test_lsgm_trains_on_two_ranks(tmp_path):
    out = tmp_path / "ddp"
    run_two_ranks(__file__, out)
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

"""Every run configuration in configs/ builds, trains two steps and samples with its own sampler
settings (a smoke test: the training recipes themselves are checked by their objectives' tests)."""

from pathlib import Path

import pytest
import torch

from pydiffuse import config, loading

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_trains_and_samples(path, tmp_path):
    cfg = config.load_config(path)
    trainer = config.train_from_config(cfg, tmp_path, steps=2, batch_size=8, log_every=1,
                                       progress=False)
    assert trainer.step == 2 and all(torch.isfinite(torch.tensor(trainer.history)))
    if cfg["objective"]["type"] == "classifier":
        return
    pipe = loading.load(tmp_path)
    sampler = cfg.get("sample", {}).get("sampler")
    # pc on VP: the chain needs N > beta_max; ode: adaptive RK45 (LSGM's latent ODE)
    steps = {"ald": 1, "pc": 25, "ode": None}.get(sampler, 2)
    x = pipe.sample(2, steps=steps, progress=False)
    assert x.shape == (2, *pipe.event_shape) and torch.isfinite(x).all()

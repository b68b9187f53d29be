"""Run configurations, ``pydiffuse.load`` and the ``train`` / ``sample`` commands end to end on
tiny runs."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pydiffuse import cli, config, pipeline
from pydiffuse.training import CheckpointError

TOY = {"name": "toy", "model": {"preset": "mlp", "hidden": 32, "depth": 2},
       "process": {"type": "linear", "num_timesteps": 50}, "prediction": "eps",
       "objective": {"type": "ddpm"}, "data": {"type": "gaussian_mixture", "n": 256},
       "train": {"steps": 5, "batch_size": 32, "lr": 1e-3, "ema_rates": [0.9], "log_every": 1},
       "sample": {"sampler": "ddim", "steps": 5}}
DIGITS = {"name": "tiny-digits",
          "model": {"preset": "digits", "model_channels": 16, "head_channels": 32,
                    "num_groups": 4},
          "process": {"type": "cosine", "num_timesteps": 100}, "prediction": "eps",
          "objective": {"type": "ddpm", "p_uncond": 0.2, "null_class": 10},
          "data": {"type": "digits"},
          "train": {"steps": 2, "batch_size": 16, "ema_rates": [0.99]},
          "sample": {"sampler": "ddim", "steps": 3}}


def write(tmp_path, cfg, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_then_sample_npz_through_the_cli(tmp_path, capsys):
    cfg_path = write(tmp_path, TOY)
    assert cli.main(["train", str(cfg_path), "--run-dir", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "step_0000005" / "model.safetensors").is_file()
    out = tmp_path / "s.npz"
    assert cli.main(["sample", "--ckpt", str(tmp_path / "run"), "--n", "12", "--out",
                     str(out)]) == 0
    x = np.load(out)["x"]
    assert x.shape == (12, 2) and np.isfinite(x).all() and np.abs(x).max() <= 1
    assert "12 samples" in capsys.readouterr().out


def test_resume_continues_the_run(tmp_path):
    cfg = config.load_config(write(tmp_path, TOY))
    first = config.train_from_config(cfg, tmp_path / "run", steps=3, progress=False)
    again = config.train_from_config(cfg, tmp_path / "run", steps=5, resume=True, progress=False)
    assert again.step == 5 and again.history[:3] == first.history


def test_digits_unet_grid_and_class_conditional_pipeline(tmp_path):
    cfg = config.load_config(write(tmp_path, DIGITS))
    config.train_from_config(cfg, tmp_path / "run", progress=False)
    pipe = pipeline.load(tmp_path / "run")
    assert pipe.event_shape == (1, 8, 8) and pipe.prediction == "eps"
    x = pipe.sample(6, seed=1)
    assert x.shape == (6, 1, 8, 8) and x.abs().max() <= 1
    torch.testing.assert_close(pipe.sample(6, seed=1), x)          # the same seed, same images
    guided = pipe.sample(3, labels=[1, 2, 3], guidance=2.0, steps=2)
    assert guided.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="labels"):
        pipe.sample(2, guidance=2.0)
    out = tmp_path / "grid.png"
    assert cli.main(["sample", "--ckpt", str(tmp_path / "run"), "--n", "10", "--out",
                     str(out), "--steps", "2"]) == 0
    with Image.open(out) as img:        # 8 per row, 4x enlarged 8x8 images, 1-pixel gaps
        assert img.size == (8 * 33 + 1, 2 * 33 + 1)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="missing sections"):
        config.load_config(write(tmp_path, {"model": {"preset": "mlp"}}))
    with pytest.raises(ValueError, match="unknown process type"):
        config.build_process({"process": {"type": "quadratic"}})
    with pytest.raises(ValueError, match="unknown objective type"):
        config.build_objective({"objective": {"type": "gan"}}, None)
    with pytest.raises(FileNotFoundError):
        config.load_config(tmp_path / "absent.yaml")
    assert cli.main(["train", str(write(tmp_path, {**TOY, "train": {}}))]) == 2


def test_load_refuses_a_damaged_checkpoint(tmp_path):
    config.train_from_config(config.load_config(write(tmp_path, TOY)), tmp_path / "run",
                             progress=False)
    ckpt = tmp_path / "run" / "step_0000005"
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        pipeline.load(ckpt)
    with pytest.raises(FileNotFoundError):
        pipeline.load(tmp_path / "nowhere")

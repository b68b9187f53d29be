"""Run configurations, ``pydiffuse.load`` and the ``train`` / ``sample`` commands end to end on
tiny runs."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from pydiffuse import cli, config, loading, training
from pydiffuse.training import CheckpointError
from pydiffuse.training.checkpoint import checkpoints, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]

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
    pipe = loading.load(tmp_path / "run")
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
        loading.load(ckpt)
    with pytest.raises(FileNotFoundError):
        loading.load(tmp_path / "nowhere")


# -- reproducible fresh runs, exact resume, and a run directory that already holds a run -------

def run_result(run_dir) -> tuple:
    """(newest checkpoint's name, its weights {file: state dict}, the logged records without
    their timing)."""
    ckpt = latest_checkpoint(run_dir)
    tensors = {f.name: load_file(f) for f in sorted(ckpt.glob("*.safetensors"))}
    logged = [{k: v for k, v in json.loads(ln).items() if k != "steps_per_s"}
              for ln in (run_dir / "log.jsonl").read_text().splitlines()]
    return ckpt.name, tensors, logged


def assert_same_run(a, b):
    assert a[0] == b[0] and a[2] == b[2]                # checkpoint step, losses step by step
    assert a[1].keys() == b[1].keys()
    for name, tensors in a[1].items():
        assert tensors.keys() == b[1][name].keys()
        for k, v in tensors.items():
            assert torch.equal(v, b[1][name][k]), (name, k)


def test_fresh_runs_through_the_cli_are_bit_identical(tmp_path):
    cfg_path = str(write(tmp_path, TOY))
    results = []
    for name, global_seed in (("a", 1), ("b", 2)):  # whatever the caller's RNG state
        torch.manual_seed(global_seed)
        assert cli.main(["train", cfg_path, "--run-dir", str(tmp_path / name)]) == 0
        results.append(run_result(tmp_path / name))
    assert results[0][0] == "step_0000005" and len(results[0][2]) == 5
    assert_same_run(*results)
    # stopped at step 3 of 5 (as a kill after the checkpoint at 3 would) and resumed
    assert cli.main(["train", cfg_path, "--run-dir", str(tmp_path / "c"), "--steps", "3"]) == 0
    assert cli.main(["train", cfg_path, "--run-dir", str(tmp_path / "c"), "--resume"]) == 0
    assert_same_run(run_result(tmp_path / "c"), results[0])


def test_seeded_model_init_keeps_the_callers_rng(tmp_path):
    torch.manual_seed(3)
    before = torch.get_rng_state()
    with training.seeded_init(0):
        first = config.build_model(TOY)[0]
    assert torch.equal(torch.get_rng_state(), before)
    with training.seeded_init(0):
        again = config.build_model(TOY)[0]
    for (k, v), w in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(v, w), k


def test_a_killed_run_resumes_bit_identical(tmp_path):
    """A `pydiffuse train` process killed with SIGKILL soon after its first checkpoint (possibly
    mid-save or mid-log-line), then resumed: the same weights and log as an uninterrupted run."""
    cfg = {**TOY, "train": {**TOY["train"], "steps": 60, "save_every": 1, "keep": 2}}
    cfg_path = str(write(tmp_path, cfg))
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pydiffuse.cli", "train", cfg_path,
                             "--run-dir", str(run)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(run) is None and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    killed_at = latest_checkpoint(run).name
    assert killed_at < "step_0000060", killed_at
    assert cli.main(["train", cfg_path, "--run-dir", str(run), "--resume"]) == 0
    assert cli.main(["train", cfg_path, "--run-dir", str(tmp_path / "straight")]) == 0
    assert_same_run(run_result(run), run_result(tmp_path / "straight"))


def test_cli_refuses_a_used_run_dir_and_overwrites_it(tmp_path, capsys):
    cfg_path = str(write(tmp_path, TOY))
    other = str(write(tmp_path, {**TOY, "train": {**TOY["train"], "steps": 8, "lr": 3e-3}},
                      name="other.yaml"))
    run = tmp_path / "run"
    assert cli.main(["train", other, "--run-dir", str(run)]) == 0
    old = run_result(run)
    capsys.readouterr()
    assert cli.main(["train", cfg_path, "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and err.count("\n") == 1, err
    assert_same_run(run_result(run), old)                      # untouched
    with pytest.raises(SystemExit):                             # argparse: not both
        cli.main(["train", cfg_path, "--run-dir", str(run), "--resume", "--overwrite"])
    assert cli.main(["train", cfg_path, "--run-dir", str(run), "--overwrite"]) == 0
    assert [p.name for p in checkpoints(run)] == ["step_0000005"]
    assert sorted(p.name for p in run.iterdir()) == ["log.jsonl", "step_0000005"]
    assert cli.main(["train", cfg_path, "--run-dir", str(tmp_path / "fresh")]) == 0
    assert_same_run(run_result(run), run_result(tmp_path / "fresh"))
    # and `load` serves the new model
    pipe = loading.load(run)
    new = load_file(tmp_path / "fresh" / "step_0000005" / "ema_0.9.safetensors")
    for k, v in pipe.model.state_dict().items():
        assert torch.equal(v, new[k]), k

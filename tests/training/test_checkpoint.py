"""Checkpoints: a round trip, atomic writes, the newest-first bookkeeping, and refusal of tampered
files (a pickled object in state.pt is never run; a broken safetensors file is named)."""

import os

import pytest
import torch

from pydiffuse.training.checkpoint import (
    CheckpointError,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from pydiffuse.training.trainer import Trainer
from tests.training.test_trainer import SimpleDDPM, TinyMLP, make_trainer


class Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious state.pt would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write(path, **overrides):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    parts = {"model": model.state_dict(), "emas": {0.999: model.state_dict()},
                 "state": {"step": 7, "optimizer": opt.state_dict(), "history": torch.arange(7.0),
                        "note": "plain values"},
                 "config": {"model": "linear", "kwargs": {"in": 3}}}
    parts.update(overrides)
    return save_checkpoint(path, **parts), model, opt


def test_round_trip(tmp_path):
    path, model, opt = write(tmp_path / "step_0000007")
    ckpt = load_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v) and torch.equal(ckpt["ema"][0.999][k], v)
    assert ckpt["config"] == {"model": "linear", "kwargs": {"in": 3}}
    assert ckpt["state"]["step"] == 7 and ckpt["state"]["note"] == "plain values"
    restored = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    restored.load_state_dict(ckpt["state"]["optimizer"])
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"],
                       opt.state_dict()["state"][0]["exp_avg"])
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json", "ema_0.999.safetensors", "model.safetensors", "state.pt"]


def test_failed_save_leaves_the_old_checkpoint(tmp_path):
    path, _, _ = write(tmp_path / "step_0000007")
    with pytest.raises(TypeError, match="pickle"):
        write(path, state={"bad": (i for i in ())})       # torch.save cannot pickle a generator
    assert load_checkpoint(path)["state"]["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000007"]   # no temp left
    write(path, config={"model": "again"})                 # replacing works
    assert load_checkpoint(path)["config"] == {"model": "again"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000007"]


def test_ordering_and_pruning(tmp_path):
    for step in (9, 10, 100, 2):
        write(tmp_path / f"step_{step}")
    (tmp_path / ".step_11.tmp").mkdir()                     # an interrupted save
    (tmp_path / "step_notanumber").mkdir()
    assert [p.name for p in checkpoints(tmp_path)] == ["step_2", "step_9", "step_10", "step_100"]
    assert latest_checkpoint(tmp_path).name == "step_100"
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_10", "step_100"]
    assert not (tmp_path / ".step_11.tmp").exists()
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_pickled_object_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path, _, _ = write(tmp_path / "step_0000007")
    torch.save({"step": 7, "evil": Payload(marker)}, path / "state.pt")
    with pytest.raises(CheckpointError, match="state.pt"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "ema_0.999.safetensors"])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_broken_safetensors_is_refused(tmp_path, name, damage):
    path, _, _ = write(tmp_path / "step_0000007")
    file = path / name
    data = file.read_bytes()
    file.write_bytes(b"\xff" * 64 if damage == "garbage" else data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["missing state", "bad json", "not a directory"])
def test_incomplete_checkpoint_is_refused(tmp_path, damage):
    path, _, _ = write(tmp_path / "step_0000007")
    if damage == "missing state":
        (path / "state.pt").unlink()
    elif damage == "bad json":
        (path / "config.json").write_text("{not json")
    else:
        path = tmp_path / "elsewhere"
    with pytest.raises(CheckpointError, match="state.pt|config.json|model.safetensors"):
        load_checkpoint(path)


def test_trainer_refuses_a_tampered_checkpoint(tmp_path):
    make_trainer(tmp_path).train(3)
    path = latest_checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"step": 3, "evil": Payload(marker)}, path / "state.pt")
    torch.manual_seed(0)
    with pytest.raises(CheckpointError, match="state.pt"):
        Trainer(TinyMLP(), SimpleDDPM(), torch.utils.data.TensorDataset(torch.zeros(4, 2)),
                run_dir=tmp_path, batch_size=4, resume=True, progress=False)
    assert not marker.exists()

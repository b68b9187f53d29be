"""Checkpoints: a round trip, atomic writes, the newest-first bookkeeping, and refusal of tampered
files (a pickled object in state.pt is never run, even under a rewritten manifest; a broken
safetensors file is named; 8 flipped bytes in any file fail its checksum)."""

import json
import os
import struct

import pytest
import torch

from pydiffuse import loading, pipeline
from pydiffuse.training.checkpoint import (
    CheckpointError,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    read_weights,
    save_checkpoint,
    verify_checkpoint,
    write_manifest,
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
        "config.json", "ema_0.999.safetensors", "manifest.json", "model.safetensors", "state.pt"]
    manifest = json.loads((path / "manifest.json").read_text())["files"]
    assert sorted(manifest) == ["config.json", "ema_0.999.safetensors", "model.safetensors",
                                "state.pt"]
    assert manifest["state.pt"]["size"] == (path / "state.pt").stat().st_size
    weights, config = read_weights(path)
    assert config == ckpt["config"] and all(torch.equal(v, ckpt["ema"][0.999][k])
                                            for k, v in weights.items())


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
    prune_checkpoints(tmp_path, keep=1, protect=tmp_path / "step_10")   # the one just written
    assert [p.name for p in checkpoints(tmp_path)] == ["step_10"]
    write(tmp_path / "step_3")
    prune_checkpoints(tmp_path, keep=2, protect=tmp_path / "step_3")
    assert [p.name for p in checkpoints(tmp_path)] == ["step_3", "step_10"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10", "step_3",
                                                          "step_notanumber"]


@pytest.mark.parametrize("manifest", ["stale", "rewritten"])
def test_pickled_object_is_refused_and_not_run(tmp_path, manifest):
    marker = tmp_path / "pwned"
    path, _, _ = write(tmp_path / "step_0000007")
    torch.save({"step": 7, "evil": Payload(marker)}, path / "state.pt")
    if manifest == "rewritten":       # checksums do not stop an attacker: weights_only does
        write_manifest(path)
    with pytest.raises(CheckpointError, match="state.pt"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "ema_0.999.safetensors"])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("manifest", ["stale", "rewritten"])
def test_broken_safetensors_is_refused(tmp_path, name, damage, manifest):
    path, _, _ = write(tmp_path / "step_0000007")
    file = path / name
    data = file.read_bytes()
    file.write_bytes(b"\xff" * 64 if damage == "garbage" else data[:len(data) // 2])
    if manifest == "rewritten":       # the parser's own check, behind the checksums
        write_manifest(path)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(path)


def flip_8_bytes(file):
    """Invert 8 bytes in the middle of a file's payload: inside the tensor data of a safetensors
    file (past its JSON header), mid-file otherwise. The file still parses."""
    data = bytearray(file.read_bytes())
    if file.suffix == ".safetensors":
        start = 8 + struct.unpack("<Q", data[:8])[0]
        at = start + (len(data) - start) // 2 - 4
    elif file.suffix == ".json":            # a digit of a value: still valid JSON
        at = data.index(b'"in": 3') + len(b'"in": ')
        data[at:at + 1] = b"4"
        file.write_bytes(bytes(data))
        return
    else:
        at = len(data) // 2 - 4
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    file.write_bytes(bytes(data))


CHECKPOINT_FILES = ["model.safetensors", "ema_0.999.safetensors", "state.pt", "config.json"]


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_flipped_bytes_fail_the_checksum(tmp_path, name):
    path, _, _ = write(tmp_path / "step_0000007")
    flip_8_bytes(path / name)
    for load in (load_checkpoint, read_weights, lambda p: read_weights(p, ema=False)):
        with pytest.raises(CheckpointError, match=rf"{name.replace('.', '[.]')}: SHA-256 "
                                                  r"checksum mismatch"):
            load(path)


def test_flipped_weights_load_silently_without_a_manifest_check(tmp_path):
    """What the manifest is for: 8 flipped bytes inside the tensor data parse fine."""
    path, model, _ = write(tmp_path / "step_0000007")
    flip_8_bytes(path / "model.safetensors")
    write_manifest(path)                        # (pretend the manifest was written after)
    weights = load_checkpoint(path)["model"]
    assert any(not torch.equal(weights[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("damage", ["no manifest", "missing file", "unlisted ema", "bad manifest",
                                    "resized"])
def test_manifest_problems_are_refused(tmp_path, damage):
    path, _, _ = write(tmp_path / "step_0000007")
    if damage == "no manifest":
        (path / "manifest.json").unlink()
        match = r"manifest\.json: missing.*write_manifest"
    elif damage == "missing file":
        (path / "ema_0.999.safetensors").unlink()
        match = r"ema_0\.999\.safetensors: missing \(named by"
    elif damage == "unlisted ema":
        (path / "ema_0.5.safetensors").write_bytes((path / "model.safetensors").read_bytes())
        match = r"ema_0\.5\.safetensors: not named by"
    elif damage == "bad manifest":
        (path / "manifest.json").write_text('{"files": [1]}')
        match = r"manifest\.json: not a valid checkpoint manifest"
    else:
        with open(path / "config.json", "a") as f:
            f.write(" ")
        match = r"config\.json: \d+ bytes, but the manifest says"
    for load in (load_checkpoint, read_weights, verify_checkpoint):
        with pytest.raises(CheckpointError, match=match):
            load(path)
    if damage == "no manifest":                 # the remedy the message names
        write_manifest(path)
        assert load_checkpoint(path)["state"]["step"] == 7


def test_other_files_are_ignored(tmp_path):
    path, _, _ = write(tmp_path / "step_0000007")
    (path / "notes.txt").write_text("not part of the checkpoint: never read")
    assert load_checkpoint(path)["state"]["step"] == 7


@pytest.mark.parametrize("name", ["digits", "lsgm"])
def test_shipped_models_carry_a_verified_manifest(tmp_path, name):
    shipped = pipeline.SHIPPED[name]
    verify_checkpoint(shipped)
    files = json.loads((shipped / "manifest.json").read_text())["files"]
    assert sorted(files) == ["config.json", "model.safetensors"]
    copy = tmp_path / name                      # a damaged copy is refused by pydiffuse.load
    copy.mkdir()
    for f in shipped.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    loading.load(copy)
    flip_8_bytes(copy / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: SHA-256 checksum mismatch"):
        loading.load(copy)


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


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_resume_refuses_flipped_bytes(tmp_path, name):
    make_trainer(tmp_path).train(3)
    path = latest_checkpoint(tmp_path)
    name = {"ema_0.999.safetensors": "ema_0.9.safetensors"}.get(name, name)   # the trainer's
    if name == "config.json":
        text = (path / name).read_text()
        assert '"lr": 0.003' in text
        (path / name).write_text(text.replace('"lr": 0.003', '"lr": 0.004'))
    else:
        flip_8_bytes(path / name)
    with pytest.raises(CheckpointError, match=rf"{name.replace('.', '[.]')}: SHA-256"):
        make_trainer(tmp_path, resume=True)
    with pytest.raises(CheckpointError, match=rf"{name.replace('.', '[.]')}: SHA-256"):
        loading.load(tmp_path)


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

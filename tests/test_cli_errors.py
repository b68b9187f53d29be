"""Issue 13: every mistake a user can make with the ``pydiffuse`` command ends in one line on
stderr, ``pydiffuse <command>: <the problem>``, and exit code 2, never a traceback; outputs are
checked before any sampling; bugs still show their traceback; ``Pipeline.sample`` refuses bad
class labels itself.

A few cases run the command as a user does (a subprocess, ~2-3 s of imports each); the rest
call ``cli.main`` in-process with the same argv."""

import errno
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from pydiffuse import cli, cli_checks, config, demo, images, loading, lsgm, pipeline
from pydiffuse.pipeline import SHIPPED
from pydiffuse.training import checkpoint

HAS_SHIPPED = all((SHIPPED[name] / "model.safetensors").is_file() for name in SHIPPED)
needs_shipped = pytest.mark.skipif(not HAS_SHIPPED, reason="the shipped models are not here")
NO_CUDA = not torch.cuda.is_available()

TOY = {"name": "toy", "model": {"preset": "mlp", "hidden": 16, "depth": 1},
       "process": {"type": "linear", "num_timesteps": 50}, "prediction": "eps",
       "objective": {"type": "ddpm"}, "data": {"type": "gaussian_mixture", "n": 64},
       "train": {"steps": 1, "batch_size": 16, "ema_rates": [0.9], "log_every": 1},
       "sample": {"sampler": "ddim", "steps": 2}}


def one_line(err: str, *needles) -> str:
    """The single line of ``err``, which names each of ``needles``."""
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    assert lines[0].startswith("pydiffuse "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_cli(argvs, cwd) -> list:
    """The commands as a user runs them, ``python -m pydiffuse.cli ARGS``, all at once (each
    spends seconds importing torch): [(exit code, stdout, stderr)]."""
    env = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    procs = [subprocess.Popen([sys.executable, "-m", "pydiffuse.cli", *map(str, argv)],
                              cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for argv in argvs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        results.append((proc.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs for the mistakes: configs, a tiny unconditional run, a damaged copy of it, a
    regular file (a path under it can never be written, even by root), an empty folder."""
    root = tmp_path_factory.mktemp("cli_errors")

    def cfg(name, **changes):
        path = root / name
        path.write_text(yaml.safe_dump({**TOY, **changes}))
        return path

    paths = {
        "toy": cfg("toy.yaml"),
        "preset": cfg("preset.yaml", model={"preset": "nosuch"}),
        "option": cfg("option.yaml", objective={"type": "ddpm", "foo": 1}),
        "nosize": cfg("nosize.yaml", data={"type": "folder", "root": str(root / "nowhere")}),
        "folder": cfg("folder.yaml", data={"type": "folder", "root": str(root / "nowhere"),
                                           "size": 8}),
        "npz": cfg("npz.yaml", data={"type": "npz", "path": str(root / "nowhere.npz")}),
        "nosteps": cfg("nosteps.yaml", train={}),
        "yaml": root / "bad.yaml", "strfloat": root / "strfloat.yaml",
        "file": root / "a_file", "empty": root / "empty", "run": root / "run",
        "damaged": root / "damaged",
    }
    paths["yaml"].write_text("model: [\n  bad")
    text = yaml.safe_dump({**TOY, "train": {**TOY["train"], "lr": 0.125}})
    paths["strfloat"].write_text(text.replace("0.125", "2e-4"))
    paths["file"].write_text("not a folder")
    paths["empty"].mkdir()
    config.train_from_config(config.load_config(paths["toy"]), paths["run"], progress=False)
    step = checkpoint.latest_checkpoint(paths["run"])
    (paths["damaged"] / step.name).mkdir(parents=True)
    for f in step.iterdir():
        (paths["damaged"] / step.name / f.name).write_bytes(f.read_bytes())
    with open(paths["damaged"] / step.name / "model.safetensors", "ab") as f:
        f.write(b"garbage")
    return paths


# -- as a user runs it: subprocesses ----------------------------------------------------------

def test_as_a_user_runs_it(files, tmp_path):
    """The must-haves end to end: a missing config, an --out that cannot be written, --n 0,
    --device cuda without CUDA, bad labels: one line, exit 2; and train --help lists the
    shipped configs."""
    cases = [
        (["train", "nope.yaml"], ["train", "nope.yaml"]),
        (["sample", "--ckpt", files["run"], "--out", files["file"] / "x.png"],
         ["sample", "--out", "a_file", "not a directory"]),
        (["sample", "--ckpt", files["run"], "--n", "0", "--out", "x.png"], ["--n"]),
        (["sample", "--ckpt", files["run"], "--labels", "10,-1", "--out", "x.png"],
         ["--labels"]),
    ]
    if NO_CUDA:
        cases.append((["sample", "--ckpt", files["run"], "--device", "cuda", "--out", "x.png"],
                      ["--device", "no CUDA device"]))
    *results, (code, help_text, help_err) = run_cli([argv for argv, _ in cases]
                                                    + [["train", "--help"]], cwd=tmp_path)
    for (argv, needles), (code_, _, err) in zip(cases, results):
        assert code_ == 2, (argv, err)
        one_line(err, *needles)
    assert not list(tmp_path.iterdir())          # nothing written
    assert code == 0 and not help_err
    shipped = cli_checks.shipped_configs()
    assert shipped, "configs/ is not beside the package in this checkout"
    for path in shipped:
        assert path.name in help_text
    assert cli.DEBUG_ENV in help_text


# -- in-process: every mistake ----------------------------------------------------------------

def mistakes(files):
    """(argv, strings the one line must contain) for each mistake."""
    f = files
    bad_out = str(f["file"] / "x.png")
    run = str(f["run"])
    cases = [
        # configs
        (["train", str(f["yaml"])], ["not valid YAML", "line 2"]),
        (["train", str(f["preset"]), "--run-dir", str(f["empty"])], ["preset", "nosuch"]),
        (["train", str(f["option"])], ["objective", "foo"]),
        (["train", str(f["nosize"])], ["data", "size"]),
        (["train", str(f["folder"]), "--run-dir", str(f["empty"] / "r1")], ["nowhere"]),
        (["train", str(f["npz"]), "--run-dir", str(f["empty"] / "r2")], ["nowhere.npz"]),
        (["train", str(f["strfloat"])], ["train.lr", "2e-4", "0.0002"]),
        (["train", str(f["nosteps"])], ["steps"]),
        (["train", str(f["toy"]), "--steps", "0"], ["--steps"]),
        (["train", str(f["toy"]), "--run-dir", str(f["file"] / "run")],
         ["--run-dir", "not a directory"]),
        (["train", str(f["toy"]), "--run-dir", str(f["file"])], ["--run-dir", "not a directory"]),
        # checkpoints
        (["sample", "--ckpt", "nope", "--out", "x.png"], ["nope", "not a checkpoint"]),
        (["sample", "--ckpt", str(f["empty"]), "--out", "x.png"], ["empty", "not a checkpoint"]),
        (["sample", "--ckpt", str(f["damaged"]), "--out", str(f["empty"] / "x.npz")],
         ["model.safetensors", "manifest"]),
        (["likelihood", "--ckpt", "nope"], ["nope"]),
        # outputs
        (["sample", "--ckpt", run, "--out", bad_out], ["--out", "not a directory"]),
        (["sample", "--ckpt", run, "--out", "x.jpg"], ["--out", ".png or .npz"]),
        (["sample", "--ckpt", run, "--out", str(f["empty"])], ["--out"]),
        (["demo", "--out", bad_out], ["--out", "not a directory"]),
        (["demo", "--out", "grid.jpg"], ["--out", ".png"]),
        (["demo", "--ckpt", run, "--n", "2", "--out", str(f["empty"] / "d.png")],
         ["8x8 digits"]),
        (["bench", "--quick", "--json", str(f["file"] / "b.json")], ["--json"]),
        # numbers
        (["sample", "--ckpt", run, "--n", "0", "--out", "x.png"], ["--n", "0"]),
        (["sample", "--ckpt", run, "--n", "-2", "--out", "x.png"], ["--n", "-2"]),
        (["sample", "--ckpt", run, "--steps", "0", "--out", "x.png"], ["--steps"]),
        (["sample", "--ckpt", run, "--steps", "-3", "--out", "x.png"], ["--steps"]),
        (["sample", "--ckpt", run, "--seed", str(2 ** 64), "--out", "x.png"], ["--seed"]),
        (["demo", "--n", "0"], ["--n"]),
        (["demo", "--n", "-2"], ["--n"]),
        (["likelihood", "--ckpt", run, "--n", "0"], ["--n"]),
        (["likelihood", "--ckpt", run, "--n", "-2"], ["--n"]),
        (["likelihood", "--ckpt", run, "--batch-size", "0"], ["--batch-size"]),
        (["likelihood", "--ckpt", run, "--steps", "0"], ["--steps"]),
        (["likelihood", "--ckpt", run, "--bins", "1"], ["--bins"]),
        (["likelihood", "--ckpt", run, "--rtol", "0"], ["--rtol"]),
        (["likelihood", "--ckpt", run, "--eps", "1.5"], ["--eps"]),
        (["likelihood", "--ckpt", run, "--data", "nope.npz"], ["--data", "nope.npz"]),
        (["bench", "--shape", "0,0"], ["--shape", "0,0"]),
        (["bench", "--shape=-1,4"], ["--shape", "-1,4"]),
        (["bench", "--shape", "abc"], ["--shape", "abc"]),
        (["bench", "--ops", ","], ["--ops"]),
        # labels (an unconditional run: the checks that need no class-conditional model)
        (["sample", "--ckpt", run, "--labels", "1.5", "--out", "x.png"], ["--labels", "1.5"]),
        (["sample", "--ckpt", run, "--labels", "a", "--out", "x.png"], ["--labels", "'a'"]),
        (["sample", "--ckpt", run, "--labels", "1,-1", "--out", "x.png"], ["--labels", "-1"]),
        (["sample", "--ckpt", run, "--labels", "1,2,3", "--n", "2", "--out", "x.png"],
         ["--labels", "--n 2"]),
        (["sample", "--ckpt", run, "--guidance", "2", "--out", "x.png"],
         ["--guidance", "--labels"]),
        (["sample", "--ckpt", run, "--labels", "1", "--out", str(f["empty"] / "x.npz")],
         ["--labels", "not a class-conditional"]),
        # devices
        (["sample", "--ckpt", run, "--device", "bogus", "--out", "x.png"], ["--device"]),
    ]
    if NO_CUDA:
        cases += [
            (["sample", "--ckpt", run, "--device", "cuda", "--out", "x.png"],
             ["cuda", "no CUDA device"]),
            (["likelihood", "--ckpt", run, "--device", "cuda"], ["cuda", "no CUDA device"]),
            (["bench", "--device", "cuda", "--quick"], ["cuda"]),
        ]
    return cases


def test_every_mistake_is_one_line(files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)          # relative outputs land here, and must not
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    for argv, needles in mistakes(files):
        code = cli.main(argv)
        out = capsys.readouterr()
        assert code == 2, (argv, out)
        one_line(out.err, f"pydiffuse {argv[0]}:", *needles)
    assert not list(tmp_path.iterdir())


@needs_shipped
def test_labels_of_the_shipped_models(capsys, tmp_path):
    cases = [(["--ckpt", "digits", "--labels", "10,-1"], ["--labels", "-1"]),
             (["--ckpt", "digits", "--labels", "3,10"], ["--labels", "[0, 10)", "10"]),
             (["--ckpt", "lsgm", "--labels", "1"], ["--labels", "not a class-conditional"]),
             (["--ckpt", "lsgm", "--guidance", "2", "--labels", "1"], ["--labels/--guidance"])]
    for argv, needles in cases:
        assert cli.main(["sample", *argv, "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
        one_line(capsys.readouterr().err, *needles)
    assert not list(tmp_path.iterdir())


def test_outputs_are_checked_before_any_work(files, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("reached the work before checking the output")

    monkeypatch.setattr(loading, "load", must_not_run)
    monkeypatch.setattr(demo, "run", must_not_run)
    unwritable = str(files["file"] / "x.png")
    for argv in (["sample", "--ckpt", "digits", "--out", unwritable],
                 ["sample", "--ckpt", "digits", "--out", str(files["empty"] / "x.gif")],
                 ["demo", "--out", unwritable],
                 ["train", str(files["toy"]), "--run-dir", str(files["file"] / "run")]):
        assert cli.main(argv) == 2
        one_line(capsys.readouterr().err, "a_file" if "x.gif" not in argv[-1] else "x.gif")


def test_labels_are_checked_before_sampling(files, monkeypatch, capsys, tmp_path):
    def must_not_run(*args, **kwargs):
        raise AssertionError("sampled before checking the labels")

    monkeypatch.setattr(pipeline.Pipeline, "sample", must_not_run)
    assert cli.main(["sample", "--ckpt", str(files["run"]), "--labels", "1", "--out",
                     str(tmp_path / "x.npz")]) == 2
    one_line(capsys.readouterr().err, "--labels")


def test_missing_output_folders_are_created(files, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "x.npz"
    assert cli.main(["sample", "--ckpt", str(files["run"]), "--n", "3", "--out", str(out)]) == 0
    assert out.is_file() and "3 samples" in capsys.readouterr().out


def test_a_full_disk_during_a_save_is_one_line(files, tmp_path, monkeypatch, capsys):
    """ENOSPC while writing a checkpoint (as safetensors' OSError, or torch.save's opaque
    RuntimeError): one line; the checkpoint written before stays loadable."""
    run_dir = tmp_path / "run"
    assert cli.main(["train", str(files["toy"]), "--run-dir", str(run_dir)]) == 0
    capsys.readouterr()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def opaque(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 0")

    for target, name, fake, needle in ((checkpoint, "save_file", full, "No space left"),
                                       (checkpoint.torch, "save", opaque, "unexpected pos")):
        with monkeypatch.context() as m:
            m.setattr(target, name, fake)
            assert cli.main(["train", str(files["toy"]), "--run-dir", str(run_dir),
                             "--resume", "--steps", "2"]) == 2
        one_line(capsys.readouterr().err, "could not write a checkpoint", str(run_dir), needle,
                 "free")
        assert checkpoint.latest_checkpoint(run_dir).name == "step_0000001"
        loading.load(run_dir)                   # intact: its manifest checks out
    # writing the samples: the same, naming --out
    with monkeypatch.context() as m:
        m.setattr(images.np, "savez", full)
        assert cli.main(["sample", "--ckpt", str(run_dir), "--n", "2", "--out",
                         str(tmp_path / "s.npz")]) == 2
    one_line(capsys.readouterr().err, "--out", "s.npz", "No space left")


def test_ctrl_c_is_one_line_and_130(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "load", interrupted)
    assert cli.main(["sample", "--ckpt", "x", "--out", str(tmp_path / "x.png")]) == 130
    one_line(capsys.readouterr().err, "interrupted")


def test_bugs_keep_their_traceback(monkeypatch, tmp_path):
    def bug(*args, **kwargs):
        return torch.zeros(2) + torch.zeros(3)     # torch's RuntimeError: not a user error

    monkeypatch.setattr(loading, "load", bug)
    with pytest.raises(RuntimeError, match="size of tensor"):
        cli.main(["sample", "--ckpt", "x", "--out", str(tmp_path / "x.png")])
    monkeypatch.setattr(loading, "load", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["sample", "--ckpt", "x", "--out", str(tmp_path / "x.png")])


def test_debug_env_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError, match="nope"):
        cli.main(["sample", "--ckpt", "nope", "--out", str(tmp_path / "x.png")])


def test_which_errors_are_user_errors(tmp_path):
    def caught(fn):
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - the point
            return err
        raise AssertionError("no error")

    from pydiffuse import ops
    from pydiffuse.data import npz_dataset

    assert cli.user_error(caught(lambda: int("x"))) == "invalid literal for int() with base " \
                                                      "10: 'x'"
    # a ValueError Python raised inside pydiffuse's own code is a bug, not a user error
    code = compile("a, b = [1]", str(cli_checks.PACKAGE_DIR / "not_a_module.py"), "exec")
    assert cli.user_error(caught(lambda: exec(code))) is None  # noqa: S102 - our own code
    # pydiffuse's own argument checks (raise TypeError / KeyError) are user errors
    assert "dtype" in cli.user_error(caught(lambda: ops.randn([2], 0, dtype=torch.int32)))
    np_path = tmp_path / "y.npz"
    np.savez(np_path, other=[1])
    assert cli.user_error(caught(lambda: npz_dataset(np_path))).startswith(str(np_path))
    # a bad call, or torch's own error, is a bug
    assert cli.user_error(caught(lambda: images.grid())) is None
    assert cli.user_error(caught(lambda: torch.zeros(2) + torch.zeros(3))) is None
    err = caught(lambda: (tmp_path / "no" / "file").read_text())
    assert cli.user_error(err) == f"{tmp_path / 'no' / 'file'}: No such file or directory"


def test_help_says_what_each_command_does(capsys):
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"info", "bench", "demo", "train", "sample", "likelihood"}
    for name, sub in commands.items():
        assert sub.description and len(sub.description) > 40, name
        assert cli.DEBUG_ENV in sub.epilog, name
    for name in ("sample", "likelihood"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([name, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert all(f"{model}" in out for model in SHIPPED) and "shipped models" in out


# -- the library: Pipeline.sample's labels ----------------------------------------------------

@needs_shipped
def test_pipeline_refuses_bad_labels():
    pipe = loading.load("digits")
    bad = [([10], "[0, 10)"), ([-1], "[0, 10)"), ([1.7, 2.0], "integer"),
           (torch.tensor([1.0, 2.0]), "integer"), ([True, False], "integer"), ("a", "integer"),
           ([1, 2, 3], "one per sample (2)"), ([], "one per sample"),
           (torch.tensor([[1, 2], [3, 4]]), "one per sample (2)"), ([2 ** 70], "integer")]
    for labels, match in bad:
        with pytest.raises(ValueError, match=r"labels.*" + re.escape(match)):
            pipe.sample(2, steps=1, labels=labels)
    for n in (0, -2, 1.5):
        with pytest.raises(ValueError, match="n "):
            pipe.sample(n, steps=1)
    with pytest.raises(ValueError, match="labels"):
        pipe.sample(2, steps=1, guidance=2.0)
    # good: one label for all, one per sample (list, tensor)
    for labels in (3, [3], [1, 9], torch.tensor([0, 9]), torch.tensor([4], dtype=torch.int32)):
        assert pipe.sample(2, sampler="ddim", steps=1, labels=labels).shape == (2, 1, 8, 8)
    lsgm_pipe = loading.load("lsgm")
    assert isinstance(lsgm_pipe, lsgm.LSGMPipeline)
    for labels in ([1], [10], [1.5], 1):
        with pytest.raises(ValueError, match="labels"):
            lsgm_pipe.sample(2, labels=labels)
    with pytest.raises(ValueError, match="n "):
        lsgm_pipe.sample(0)

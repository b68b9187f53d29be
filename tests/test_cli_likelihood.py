"""``pydiffuse likelihood`` end to end on the shipped digits model, on two test digits: the printed
mean and standard error are those of ``vlb`` / ``ode_nll`` called directly with the model's
prediction, the digits' labels, their 17 levels and the same seed (a respaced 10-step VLB and a
loose-tolerance ODE keep it to a few seconds)."""

import math
import re

import torch

from pydiffuse import cli, data, likelihood, load, lsgm


def printed(out: str):
    """(mean, standard error) from the command's first line."""
    m = re.match(r"(vlb|ode|nelbo): (\S+) \+- (\S+) bits/dim", out)
    assert m, out
    return float(m.group(2)), float(m.group(3))


def expected(bpd):
    bpd = bpd.double()
    return bpd.mean().item(), bpd.std().item() / math.sqrt(len(bpd))


def digits_pair():
    x, y = data.digits("test").tensors
    return x[:2], y[:2]


def test_vlb_command(capsys):
    assert cli.main(["likelihood", "--ckpt", "digits", "--method", "vlb", "--n", "2",
                     "--steps", "10", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    pipe = load("digits")
    x, y = digits_pair()
    r = likelihood.vlb(pipe.model, pipe.process, x, prediction=pipe.prediction, steps=10,
                       bins=17, seed=3, progress=False, model_kwargs={"y": y})
    mean, se = expected(r.bpd)
    assert printed(out) == (round(mean, 4), round(se, 4))
    assert "prior L_T" in out and "L_0" in out and "17 levels" in out
    # the labels matter: the null label gives another bound
    unlabelled = likelihood.vlb(pipe.model, pipe.process, x, prediction=pipe.prediction,
                                steps=10, bins=17, seed=3, progress=False,
                                model_kwargs={"y": torch.full((2,), 10)})
    assert round(expected(unlabelled.bpd)[0], 4) != printed(out)[0]


def test_ode_command(capsys):
    args = ["--rtol", "1e-3", "--atol", "1e-3", "--eps", "1e-3"]
    assert cli.main(["likelihood", "--ckpt", "digits", "--method", "ode", "--n", "2",
                     *args]) == 0
    out = capsys.readouterr().out
    pipe = load("digits")
    x, y = digits_pair()
    r = likelihood.ode_nll(pipe.model, pipe.process, x, prediction=pipe.prediction,
                           rtol=1e-3, atol=1e-3, eps=1e-3, dequantize=True, bins=17,
                           progress=False, model_kwargs={"y": y})
    mean, se = expected(r.bpd)
    assert printed(out) == (round(mean, 4), round(se, 4))
    assert f"{r.nfe} model evaluations" in out


def test_lsgm_nelbo_command(capsys):
    assert cli.main(["likelihood", "--ckpt", "lsgm", "--n", "2", "--seed", "1",
                     "--rtol", "1e-3", "--atol", "1e-3"]) == 0
    out = capsys.readouterr().out
    x, _ = digits_pair()
    r = lsgm.nelbo(load("lsgm").model, x, prior="ode", seed=1, divergence="hutchinson",
                   rtol=1e-3, atol=1e-3)
    mean, se = expected(r["bpd"])
    assert out.startswith("nelbo:") and printed(out) == (round(mean, 4), round(se, 4))
    assert f"{r['nfe']} model evaluations" in out
    assert cli.main(["likelihood", "--ckpt", "lsgm", "--method", "ode"]) == 2
    assert "nelbo" in capsys.readouterr().err
    assert cli.main(["likelihood", "--ckpt", "digits", "--method", "nelbo"]) == 2
    assert "vlb or ode" in capsys.readouterr().err


def test_bad_arguments(capsys):
    assert cli.main(["likelihood", "--ckpt", "digits", "--method", "ode", "--steps", "5"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert cli.main(["likelihood", "--ckpt", "digits", "--n", "0"]) == 2
    assert "--n" in capsys.readouterr().err

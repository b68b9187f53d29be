"""The samplers' registry: every sampler module registers its function, and the package, the
front door, the command line, the README and the pipelines read ``SAMPLERS``; each registered
sampler runs on the process kinds it lists (an SDE sampler also on a linear DiscreteSchedule, as
its chain's SDE) and refuses the others, deterministic or seeded as
its entry says; ``register`` refuses a malformed sampler."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import pydiffuse
from pydiffuse import cli, samplers, schedules, sde
from pydiffuse.ops import randn
from pydiffuse.samplers import SAMPLERS, register
from pydiffuse.samplers.registry import PROCESS_KINDS
from tests.samplers.oracle_cases import mixture_2d

README = Path(__file__).resolve().parents[2] / "README.md"
PROCESSES = {"discrete": lambda: schedules.linear(1000), "sde": sde.VPSDE,
             "ladder": lambda: schedules.NoiseLadder(schedules.geometric_sigmas(5.0, 0.05, 6))}


def _run(name, kind, seed=0):
    """The sampler's quick run from one x_T (so only its own noise depends on the seed)."""
    process = PROCESSES[kind]()
    x_T = randn([16, 2], 3, 0) * process.prior_std
    return pydiffuse.sample(mixture_2d(process, "eps"), x_T=x_T, process=process, sampler=name,
                            seed=seed, return_info=True, **SAMPLERS[name].quick)


def test_every_sampler_module_registers_its_sampler():
    """A function ``sample_<name>(model, x, process, ...)`` in a module of the package is a
    registered sampler, exported by the package under its name."""
    found = set()
    for module in pkgutil.iter_modules(samplers.__path__):
        mod = importlib.import_module(f"pydiffuse.samplers.{module.name}")
        for fn_name, fn in inspect.getmembers(mod, inspect.isfunction):
            params = list(inspect.signature(fn).parameters)
            if fn.__module__ == mod.__name__ and fn_name.startswith("sample_") \
                    and params[:3] == ["model", "x", "process"]:
                found.add(fn_name)
    assert found == {entry.fn.__name__ for entry in SAMPLERS.values()}
    assert {"ddpm", "ddim", "ald", "pc", "ode", "euler", "heun", "dpmpp_2m"} <= set(SAMPLERS)
    for name, entry in SAMPLERS.items():
        assert entry.fn.__name__ == f"sample_{name}" and entry.name == name
        assert getattr(samplers, entry.fn.__name__) is entry.fn
        assert entry.fn.__name__ in samplers.__all__
        assert set(entry.processes) <= set(PROCESS_KINDS) and entry.paper and entry.title


@pytest.mark.parametrize("name", SAMPLERS)
def test_runs_on_its_processes_and_refuses_the_others(name):
    entry = SAMPLERS[name]
    for kind in PROCESS_KINDS:
        # the front door runs an SDE sampler on a DDPM model's linear schedule (its chain's SDE)
        if kind not in entry.processes and not (kind == "discrete" and "sde" in entry.processes):
            with pytest.raises(ValueError, match=f"the {name} sampler needs a"):
                _run(name, kind)
            continue
        x, info = _run(name, kind)
        assert x.shape == (16, 2) and torch.isfinite(x).all() and info["nfe"] > 0, kind
        torch.testing.assert_close(_run(name, kind)[0], x, rtol=0, atol=0)
        other = _run(name, kind, seed=1)[0]
        if entry.stochastic is True:          # always draws noise: the seed matters
            assert not torch.equal(other, x), kind
        elif entry.stochastic is False:       # never: the seed does not
            torch.testing.assert_close(other, x, rtol=0, atol=0)


def test_entries_call_their_function_and_read_its_signature():
    ddim = SAMPLERS["ddim"]
    process = schedules.linear(1000)
    mix, x = mixture_2d(process, "eps"), randn([8, 2], 1, 0)
    torch.testing.assert_close(ddim(mix, x, process, steps=5), samplers.sample_ddim(
        mix, x, process, steps=5), rtol=0, atol=0)
    assert ddim.options == ("eta", "clip", "spacing", "steps_offset", "set_alpha_to_one")
    assert ddim.defaults["steps"] == 50 and ddim.defaults["eta"] == 0.0
    assert SAMPLERS["ode"].is_adaptive({}) and SAMPLERS["ode"].is_adaptive({"method": "rk45"})
    assert not SAMPLERS["ode"].is_adaptive({"method": "heun"})
    assert SAMPLERS["dpm_adaptive"].is_adaptive({})
    assert not ddim.is_stochastic({}) and ddim.is_stochastic({"eta": 0.5})
    assert SAMPLERS["euler_ancestral"].is_stochastic({}) and SAMPLERS["pc"].is_stochastic({})
    assert not SAMPLERS["heun"].is_stochastic({"churn": 0.0})
    assert SAMPLERS["heun"].is_stochastic({"churn": 1.0}) and not SAMPLERS["lms"].is_stochastic({})
    assert not any(SAMPLERS[n].is_adaptive({}) for n in SAMPLERS
               if n not in ("ode", "dpm_adaptive"))


def test_cuda_graph_refuses_an_adaptive_run():
    with pytest.raises(ValueError, match="fixed-step sampler; ode with method='rk45'"):
        pydiffuse.sample(mixture_2d(sde.VPSDE(), "eps"), (4, 2), process=sde.VPSDE(),
                         sampler="ode", cuda_graph=True)


def _toy_sampler():
    def sample_toy(model, x, process, *, steps=3, prediction="eps", seed=None, callback=None,
                   progress=False, scale=1.0):
        """x_T scaled, ``steps`` model calls for show."""
        for i in range(steps):
            model(x, torch.zeros(len(x), dtype=torch.long))
        return x * scale
    return sample_toy


def test_a_registered_sampler_is_everywhere_at_once():
    """What adding a module does: ``register`` alone puts it in ``pydiffuse.sample`` and the
    command line's choices."""
    fn = register("toy", title="toy", paper="none", processes=("discrete",), stochastic=False,
                  order=1, nfe_per_step=1, quick={"steps": 2})(_toy_sampler())
    try:
        assert SAMPLERS["toy"].fn is fn and SAMPLERS["toy"].options == ("scale",)
        out, info = pydiffuse.sample(lambda x, t: x, (4, 2), process=schedules.linear(1000),
                                     sampler="toy", steps=2, scale=0.0, return_info=True)
        assert info["nfe"] == 2 and torch.equal(out, torch.zeros(4, 2))
        args = cli.build_parser().parse_args(["sample", "--ckpt", "digits", "--out", "g.png",
                                              "--sampler", "toy"])
        assert args.sampler == "toy"
    finally:
        del SAMPLERS["toy"]
    with pytest.raises(SystemExit):          # argparse's usage error: exit 2
        cli.build_parser().parse_args(["sample", "--ckpt", "digits", "--out", "g.png",
                                       "--sampler", "toy"])


def test_command_line_lists_every_sampler(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sample", "--help"])
    text = capsys.readouterr().out
    for name, entry in SAMPLERS.items():
        assert re.search(rf"^  {name} +{re.escape(entry.title)} \(", text, re.M), name


@pytest.mark.parametrize("name,kwargs,match", [
    ("ddim", {}, "registered twice"),
    ("toy2", {}, "must be named sample_toy2"),
    ("toy", {"processes": ("discrete", "latent")}, "processes must be some of"),
    ("toy", {"processes": ()}, "processes must be some of"),
    ("toy", {"quick": {"stepz": 2}}, r"takes no option \['stepz'\]"),
    ("toy", {"adaptive": {"method": "rk45"}}, r"takes no option \['method'\]"),
])
def test_register_refuses_a_malformed_sampler(name, kwargs, match):
    meta = {"title": "toy", "paper": "none", "processes": ("discrete",), "stochastic": False,
            "order": 1, "nfe_per_step": 1, **kwargs}
    fn = _toy_sampler()
    if name == "ddim":
        fn.__name__ = "sample_ddim"
    before = dict(SAMPLERS)
    with pytest.raises(ValueError, match=match):
        register(name, **meta)(fn)
    assert SAMPLERS == before


def test_register_refuses_another_signature():
    def sample_toy(model, x, *, steps=3, prediction="eps", seed=None, callback=None,
                   progress=False):
        return x

    with pytest.raises(TypeError, match=r"must read sample_<name>\(model, x, process"):
        register("toy", title="toy", paper="none", processes=("discrete",), stochastic=False,
                 order=1, nfe_per_step=1)(sample_toy)
    assert "toy" not in SAMPLERS


def test_readme_table_lists_every_sampler():
    """The README's table of samplers (the one step of adding a sampler outside its module and
    its test) names each registered sampler, and no other."""
    text = README.read_text()
    table = text[text.index("| sampler | paper |"):]
    table = table[:table.index("\n\n")]
    named = {n for row in table.splitlines()[2:] for n in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert named == set(SAMPLERS)

"""The samplers' registry: ``SAMPLERS``, name -> ``Sampler`` (the function and what a reader, the
command line, the pipelines, the README's table and the tests need to know about it).

A sampler registers itself in its own module::

    @register("ddim", title="DDIM", paper="Song, Meng & Ermon 2021", processes=("discrete",),
              stochastic="eta > 0", order=1, nfe_per_step=1, quick={"steps": 5})
    def sample_ddim(model, x, process, *, steps=50, eta=0.0, prediction="eps", seed=None,
                    callback=None, progress=False): ...

and ``pydiffuse.samplers`` imports every module of its package, so ``SAMPLERS``,
``pydiffuse.sample(sampler=...)``, ``pydiffuse.samplers.sample_<name>``, ``pydiffuse sample
--sampler`` and the tests that run every sampler see it with no other file touched.
"""

import dataclasses
import inspect
from collections.abc import Callable

PROCESS_KINDS = ("discrete", "sde", "ladder")   # ``process.kind`` of schedules, SDEs, ladders
# the uniform signature: sample_<name>(model, x, process, *, steps, prediction, seed, callback,
# progress, ...its options)
POSITIONAL = ("model", "x", "process")
UNIFORM = ("steps", "prediction", "seed", "callback", "progress")


@dataclasses.dataclass(frozen=True)
class Sampler:
    """One registered sampler. Calling it calls ``fn``.

    Attributes:
        name: the ``sampler=`` of ``pydiffuse.sample`` and ``--sampler`` of the command line.
        fn: ``sample_<name>(model, x, process, *, steps, prediction, seed, callback, progress,
            **options)`` -> samples.
        title: the algorithm in a few words ("DDIM", "EDM Heun with churn").
        paper: where the algorithm comes from ("Song, Meng & Ermon 2021").
        processes: the ``process.kind`` values it runs on ("discrete", "sde", "ladder"); the
            pipelines view a discrete model as an SDE or a ladder for a sampler that needs one.
        stochastic: whether it draws noise: True, False, or the condition that turns it on
            ("eta > 0", "churn > 0").
        order: the order of its default method (global error ~ step^order on the ODE it
            solves); None for a Langevin chain, which solves no ODE.
        nfe_per_step: model calls a step (classifier-free guidance doubles them): an int, or a
            formula in its options ("n_corrector + 1").
        sigma_view: it steps on the noise levels sigma = std / a of any process (k-diffusion's
            view; the Karras grid options ``rho``, ``sigma_min``, ``sigma_max``).
        adaptive: it chooses its steps on the host (no CUDA graph): True, or the options that
            make it so ({"method": "rk45"}).
        quick: options of a cheap run (a few model calls) that still exercises the algorithm:
            the smoke runs of the tests.
        options: its keywords beyond the uniform ones, in signature order (from ``fn``).
        defaults: every keyword's default (from ``fn``).
    """

    name: str
    fn: Callable
    title: str
    paper: str
    processes: tuple
    stochastic: bool | str
    order: int | None
    nfe_per_step: int | str
    sigma_view: bool = False
    adaptive: bool | dict = False
    quick: dict = dataclasses.field(default_factory=dict)
    options: tuple = ()
    defaults: dict = dataclasses.field(default_factory=dict)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def is_adaptive(self, options: dict) -> bool:
        """Whether a run with these keywords chooses its steps on the host."""
        if isinstance(self.adaptive, bool):
            return self.adaptive
        return all(options.get(k, self.defaults[k]) == v for k, v in self.adaptive.items())

    def is_stochastic(self, options: dict) -> bool:
        """Whether a run with these keywords draws noise (a condition "eta > 0" on its option)."""
        if isinstance(self.stochastic, bool):
            return self.stochastic
        key, op, bound = self.stochastic.split()
        if op != ">":
            raise ValueError(f"sampler {self.name!r}: cannot read stochastic={self.stochastic!r}")
        return options.get(key, self.defaults[key]) > float(bound)


SAMPLERS: dict = {}


def _keywords(fn, name: str) -> dict:
    """fn's keyword-only parameters and their defaults, after checking the uniform signature."""
    params = list(inspect.signature(fn).parameters.values())
    positional = tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
    keywords = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    missing = [k for k in UNIFORM if k not in keywords]
    if positional != POSITIONAL or missing:
        raise TypeError(f"sampler {name!r}: {fn.__name__} must read sample_<name>(model, x, "
                        f"process, *, {', '.join(UNIFORM)}, ...options); it reads "
                        f"{fn.__name__}{inspect.signature(fn)}")
    return keywords


def register(name: str, *, title: str, paper: str, processes, stochastic, order, nfe_per_step,
             sigma_view: bool = False, adaptive=False, quick=None):
    """Decorator: register ``fn`` as the sampler ``name`` (see ``Sampler`` for the fields).

    The function keeps its name ``sample_<name>`` (``pydiffuse.samplers`` exports it) and the
    uniform signature; a clash of names, an unknown process kind, or a ``quick`` or
    ``adaptive`` option the function does not take is an error at import."""
    processes = tuple(processes)
    bad = [k for k in processes if k not in PROCESS_KINDS]
    if not processes or bad:
        raise ValueError(f"sampler {name!r}: processes must be some of {PROCESS_KINDS}, got "
                         f"{processes}")
    quick = dict(quick or {})

    def wrap(fn):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} is registered twice: {SAMPLERS[name].fn.__module__}"
                             f" and {fn.__module__}")
        if fn.__name__ != f"sample_{name}":
            raise ValueError(f"sampler {name!r}: the function must be named sample_{name}, got "
                             f"{fn.__name__}")
        keywords = _keywords(fn, name)
        unknown = [k for k in (*quick, *(adaptive if isinstance(adaptive, dict) else ()))
                   if k not in keywords]
        if unknown:
            raise ValueError(f"sampler {name!r}: {fn.__name__} takes no option {unknown}")
        SAMPLERS[name] = Sampler(
            name, fn, title, paper, processes, stochastic, order, nfe_per_step, sigma_view,
            adaptive, quick, tuple(k for k in keywords if k not in UNIFORM), keywords)
        return fn

    return wrap

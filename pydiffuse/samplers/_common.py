"""What every sampler shares: its prologue (``start``: the argument checks, the process, the
model call, the noise stream, the progress bar and the callback, as one ``Run``), the model call
(``as_denoiser``, guidance; ``Denoiser`` itself is ``pydiffuse.nn.denoiser``'s, shared with the
likelihoods), the noise stream's seeds and step counter (``NoiseStream``), per-step coefficient
tables kept on the device (``StepTable``) and the process's time as the model's ``t``."""

import torch

from ..nn.denoiser import Denoiser
from ..ops import compute_dtype, lincomb, randn
from ..ops._packing import pack_seeds
from ..predictions import check_prediction
from ..schedules import as_process
from ..utils import steps_bar
from .cuda_graph import keep_for_capture
from .registry import SAMPLERS


def as_denoiser(model) -> Denoiser:
    return model if isinstance(model, Denoiser) else Denoiser(model)


def guide_output(den: Denoiser, x, t, out, scale, std, co):
    """Classifier guidance in the DDIM form (Dhariwal & Nichol, Alg. 2): eps^ = eps - sigma g,
    g = s grad log p(y | x_t), applied to any prediction through x0's shift sigma^2 g / a:
    out^ = out + sigma^2 / (a co) g. ``out`` unchanged without a classifier."""
    grad = den.classifier_grad(x, t)
    if grad is None:
        return out
    return lincomb([out, grad.to(out.dtype)], [1.0, std * std / (scale * co)])


def guided_pair(den: Denoiser, x, t, scale, std, co):
    """``den.pair(x, t)``; with a classifier, (the combined output guided as in
    ``guide_output``, None)."""
    out, uncond = den.pair(x, t)
    if den.classifier is None:
        return out, uncond
    return guide_output(den, x, t, den.combine(out, uncond), scale, std, co), None


class NoiseStream:
    """The sampler's draws from ``pydiffuse.ops``' noise stream: per-sample seeds packed once on
    the device, and a step counter (step 0 is x_T's, drawn by ``pydiffuse.sample``)."""

    def __init__(self, seed, batch: int, device):
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, ()))
        seeds = pack_seeds(seed, batch, torch.device(device))
        self.seeds = seeds.reshape(()) if seeds.numel() == 1 else seeds    # one for the batch
        self.step = 0

    def take(self) -> dict:
        """Keywords ``seed=, step=`` of the next independent draw."""
        self.step += 1
        return {"seed": self.seeds, "step": self.step}


class StepNoise:
    """The z of a sigma-view sampler's steps: ``noise_sampler(sigma, sigma_next)`` when the user
    gives one (k-diffusion's convention, so a run can reproduce another library's draws), else
    the run's noise stream. ``at[stage][i]``: the host (sigma, sigma_next) of step i's draw at
    that stage (0: the model's step, 1: a second stage), or None where it draws none."""

    def __init__(self, run, noise_sampler, *at):
        if noise_sampler is not None and not callable(noise_sampler):
            raise TypeError("noise_sampler must be a callable noise_sampler(sigma, sigma_next) "
                            f"-> a tensor of x's shape, got {type(noise_sampler).__name__}")
        self.run, self.noise_sampler = run, noise_sampler
        self.at = [[None if p is None else tuple(map(float, p)) for p in stage] for stage in at]

    def _user(self, pair, x):
        z = self.noise_sampler(*pair)
        if not isinstance(z, torch.Tensor) or z.shape != x.shape:
            raise ValueError(f"noise_sampler{pair} must return a tensor of x's shape "
                             f"{tuple(x.shape)}, got {getattr(z, 'shape', type(z).__name__)}")
        return z.to(device=x.device, dtype=x.dtype)

    def keywords(self, stage: int, i: int, x) -> dict:
        """``sample_step``'s noise keywords of the draw ({} for none: then s must be 0)."""
        pair = self.at[stage][i] if stage < len(self.at) else None
        if pair is None:
            return {}
        return {"noise": self._user(pair, x)} if self.noise_sampler else self.run.draw()

    def tensor(self, stage: int, i: int, x):
        """The draw as a tensor like x (for a ``lincomb``), or None."""
        kw = self.keywords(stage, i, x)
        if not kw:
            return None
        return kw["noise"] if "noise" in kw else randn(
            list(x.shape), kw["seed"], kw["step"], device=x.device, dtype=x.dtype)


def host_to_device(host: torch.Tensor, device) -> torch.Tensor:
    """A host tensor copied to ``device``; for CUDA from pinned memory (the only host copy a
    CUDA-graph capture accepts), kept alive with the graph being captured."""
    device = torch.device(device)
    if device.type != "cuda":
        return host.to(device)
    pinned = host.pin_memory()
    keep_for_capture(pinned)
    return pinned.to(device, non_blocking=True)


class StepTable:
    """Per-step coefficients (float64 on the host) as one table on the device, of the ops'
    ``compute_dtype`` for the data's ``dtype`` (float32; float64 for a float64 run, so its
    coefficients are not rounded); ``row(i)`` gives 0-d device tensors, so a loop never
    synchronizes with the host (on the CPU, where there is nothing to synchronize, Python
    floats: the ops pack those fastest)."""

    def __init__(self, columns: dict, device, dtype: torch.dtype = torch.float32):
        self.names = list(columns)
        values = [torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in columns.values()]
        self.data = host_to_device(torch.stack(values, 1).to(compute_dtype(dtype)), device)
        self._host_rows = ([dict(zip(self.names, r)) for r in self.data.tolist()]
                           if self.data.device.type == "cpu" else None)

    def __len__(self) -> int:
        return len(self.data)

    def row(self, i: int) -> dict:
        if self._host_rows is not None:
            return self._host_rows[i]
        r = self.data[i]
        return {n: r[j] for j, n in enumerate(self.names)}


def model_times(process, values, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The model's t for each step, [steps] on the device: long step indices for a discrete
    schedule, an SDE's ``model_time`` (t, or a ``DiscreteVPSDE``'s chain index), sigma for a
    ladder; continuous times in ``compute_dtype(dtype)`` of the run's data dtype."""
    if not isinstance(values, torch.Tensor):     # host numbers: float64 (not torch's default)
        values = torch.tensor(values, dtype=torch.float64)
    if process.kind == "sde":
        return host_to_device(process.model_time(values, compute_dtype(dtype)), device)
    return host_to_device(values.to(torch.long if process.kind == "discrete"
                                    else compute_dtype(dtype)), device)


def model_marginal(process, t):
    """(a, std) at which the model's output is read at the process's times t: an SDE's
    ``model_marginal`` (a ``DiscreteVPSDE``'s chain), else the marginal."""
    return process.model_marginal(t) if process.kind == "sde" else process.marginal(t)


def check_x(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise TypeError("x must be a floating tensor [B, ...] (x_T)")
    return x


def check_process_kind(process, kinds, sampler: str, hint: str = ""):
    if process.kind not in kinds:
        raise ValueError(f"the {sampler} sampler needs a {' or '.join(kinds)} process, got "
                         f"{process!r}{hint}")


class Run:
    """What a sampler's loop works with, from ``start``: ``den`` (the model call, guidance),
    ``process``, ``noise`` (the noise stream, None for a deterministic run) and the per-run
    helpers below (all on x's device, for x's batch)."""

    def __init__(self, name, den, process, x, noise, callback, progress):
        self.name, self.den, self.process, self.noise = name, den, process, noise
        self.callback, self.progress = callback, progress
        self.batch, self.device, self.dtype = len(x), x.device, x.dtype

    def table(self, columns: dict) -> StepTable:
        """Host float64 columns as a ``StepTable`` on the device, for the run's dtype."""
        return StepTable(columns, self.device, self.dtype)

    def times(self, values, process=None) -> tuple:
        """The model's t of each step on the device (``model_times``) of ``process`` (default
        the run's), per step a [B] view made once before the loop."""
        times = model_times(self.process if process is None else process, values, self.device,
                            self.dtype)
        return times.unsqueeze(1).expand(len(times), self.batch).unbind(0)

    def t(self, times: tuple, i: int) -> torch.Tensor:
        """Step i's model time for the batch, [B]."""
        return times[i]

    def steps(self, n: int, desc: str | None = None):
        """range(n) with the progress bar."""
        return steps_bar(n, self.progress, self.name if desc is None else desc)

    def draw(self) -> dict:
        """Keywords ``seed=, step=`` of the stream's next draw ({} without a stream)."""
        return self.noise.take() if self.noise is not None else {}

    def report(self, i: int, t, x, **more) -> None:
        """callback({"i", "t", "x", ...}) after a step, when there is a callback."""
        if self.callback is not None:
            self.callback({"i": i, "t": t, "x": x, **more})


def start(name: str, model, x, process, *, prediction: str, seed=None, noise: bool = True,
          classifier: bool = True, callback=None, progress=False, kinds=None,
          hint: str = "") -> Run:
    """Every sampler's prologue, in this order: x checked as a floating [B, ...] tensor, the
    process (sigmas become a ``NoiseLadder``) checked to be of a kind the sampler runs on, the
    prediction checked, the model as a ``Denoiser``, the noise stream opened.

    Args:
        name: the sampler's registered name (the progress bar's label and the errors').
        model, x, process, prediction, seed, callback, progress: the sampler's own arguments.
        noise: open the noise stream of ``seed`` (False: a deterministic run, no stream).
        classifier: whether the sampler takes classifier guidance (False: a ``Denoiser`` with a
            classifier is refused).
        kinds: the process kinds it runs on (default its registry entry's ``processes``).
        hint: appended to the wrong-process error.

    Returns:
        a ``Run`` for the sampler's loop.
    """
    check_x(x)
    process = as_process(process)
    check_process_kind(process, SAMPLERS[name].processes if kinds is None else kinds, name, hint)
    check_prediction(prediction)
    den = as_denoiser(model)
    if not classifier and den.classifier is not None:
        raise ValueError(f"the {name} sampler does not take classifier guidance")
    stream = NoiseStream(seed, len(x), x.device) if noise else None
    return Run(name, den, process, x, stream, callback, progress)

"""What every sampler shares: the model call (``Denoiser``), the noise stream's seeds and step
counter (``NoiseStream``), per-step coefficient tables kept on the device (``StepTable``), the
process's time as the model's ``t``, and the progress bar."""

import torch
from tqdm.auto import tqdm

from ..ops import lincomb
from ..ops._checks import check_number
from ..ops._packing import pack_seeds
from .cuda_graph import keep_for_capture


class Denoiser:
    """The model as samplers call it: ``model(x, t, **model_kwargs)`` with its output normalized.

    - A diffusers ``UNet2DModel`` output (``.sample``) or a tuple is unwrapped.
    - An output with 2C channels for C-channel x (a learned-variance model) is cut to its first C
      channels unless the sampler asks for the variance (``keep_variance``).
    - Classifier-free guidance (Ho & Salimans 2022): with ``guidance`` (w' = 1 + w) the model also
      runs with ``uncond_kwargs`` and o = o_u + w' (o_c - o_u); ``pair`` gives both outputs so
      ``sample_step`` fuses the combination.
    - Classifier guidance (Dhariwal & Nichol 2021): ``classifier(x, t, **classifier_kwargs)``
      returns logits; ``classifier_grad`` = classifier_scale * grad_x log p(y | x_t).

    ``nfe`` counts model evaluations (a classifier's are not counted).
    """

    def __init__(self, model, *, model_kwargs=None, guidance=None, uncond_kwargs=None,
                 classifier=None, classifier_scale: float = 1.0, labels=None):
        if isinstance(model, Denoiser):
            raise TypeError("model is already a Denoiser")
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, t), got {type(model).__name__}")
        if (guidance is None) != (uncond_kwargs is None):
            raise ValueError("classifier-free guidance needs both guidance= (1 + w) and "
                             "uncond_kwargs= (the model's null-condition keywords)")
        if classifier is not None and labels is None:
            raise ValueError("classifier guidance needs labels= (the class index of each sample)")
        if guidance is not None:
            check_number(guidance, "guidance (1 + w)", minimum=0)
        check_number(classifier_scale, "classifier_scale")
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
            if labels.ndim > 1:
                raise ValueError(f"labels must be one class index or one per sample, got shape "
                                 f"{list(labels.shape)}")
        self.model, self.model_kwargs = model, dict(model_kwargs or {})
        self.guidance, self.uncond_kwargs = guidance, uncond_kwargs
        self.classifier, self.classifier_scale, self.labels = classifier, classifier_scale, labels
        self.nfe = 0

    def _run(self, x, t, kwargs, keep_variance):
        out = self.model(x, t, **kwargs)
        self.nfe += 1
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned {type(out).__name__}, expected a tensor")
        if out.shape == x.shape:
            return out
        if x.ndim >= 2 and out.shape[0] == x.shape[0] and out.shape[1] == 2 * x.shape[1] \
                and out.shape[2:] == x.shape[2:]:
            return out if keep_variance else out[:, :x.shape[1]]
        raise ValueError(f"the model returned shape {list(out.shape)} for x of shape "
                         f"{list(x.shape)} (expected x's shape, or 2C channels with a learned "
                         "variance)")

    def pair(self, x, t, keep_variance: bool = False):
        """(o_c, o_u): the conditional and unconditional outputs (o_u None without CFG)."""
        out = self._run(x, t, self.model_kwargs, keep_variance)
        if self.guidance is None:
            return out, None
        return out, self._run(x, t, {**self.model_kwargs, **self.uncond_kwargs}, keep_variance)

    def __call__(self, x, t, keep_variance: bool = False):
        """The (guided) model output o = o_u + w' (o_c - o_u)."""
        return self.combine(*self.pair(x, t, keep_variance))

    def combine(self, out, uncond):
        """o_u + w' (o_c - o_u), or o_c without guidance (one ``lincomb`` pass)."""
        if uncond is None:
            return out
        return lincomb([uncond, out], [1 - self.guidance, self.guidance])

    def fused_cfg(self, uncond) -> dict:
        """sample_step's keywords that fuse the guidance combine: {} or {out_uncond, guidance}."""
        return {} if uncond is None else {"out_uncond": uncond, "guidance": self.guidance}

    def _labels(self, batch: int, classes: int, device) -> torch.Tensor:
        """The classifier's labels as [B] indices, checked against the batch and the classes."""
        labels = self.labels.reshape(-1)
        if labels.numel() not in (1, batch):
            raise ValueError(f"labels has {labels.numel()} entries for a batch of {batch}: give "
                             "one class index or one per sample")
        if labels.device.type == "cpu" and not (                # device labels: no host sync
                0 <= int(labels.min()) and int(labels.max()) < classes):
            raise ValueError(f"labels must lie in [0, {classes}) (the classifier's classes), got "
                             f"{labels.min().item()} .. {labels.max().item()}")
        return labels.to(device).expand(batch)

    def classifier_grad(self, x, t):
        """classifier_scale * grad_x log softmax(classifier(x, t))[labels], or None."""
        if self.classifier is None:
            return None
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_p = torch.log_softmax(self.classifier(x_in, t).float(), dim=-1)
            labels = self._labels(len(x), log_p.shape[-1], x.device)
            chosen = log_p.gather(1, labels[:, None].long()).sum()
            grad, = torch.autograd.grad(chosen, x_in)
        return grad * self.classifier_scale


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
    """Per-step coefficients (float64 on the host) as one float32 table on the device; ``row(i)``
    gives 0-d device tensors, so a loop never synchronizes with the host (on the CPU, where
    there is nothing to synchronize, Python floats: the ops pack those fastest)."""

    def __init__(self, columns: dict, device):
        self.names = list(columns)
        values = [torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in columns.values()]
        self.data = host_to_device(torch.stack(values, 1).to(torch.float32), device)
        self._host_rows = ([dict(zip(self.names, r)) for r in self.data.tolist()]
                           if self.data.device.type == "cpu" else None)

    def __len__(self) -> int:
        return len(self.data)

    def row(self, i: int) -> dict:
        if self._host_rows is not None:
            return self._host_rows[i]
        r = self.data[i]
        return {n: r[j] for j, n in enumerate(self.names)}


def model_times(process, values, device) -> torch.Tensor:
    """The model's t for each step, [steps] on the device: long step indices for a discrete
    schedule, float32 (sigma, or t in [0, 1]) otherwise."""
    values = torch.as_tensor(values)
    dtype = torch.long if process.kind == "discrete" else torch.float32
    return host_to_device(values.to(dtype), device)


def batch_time(times: torch.Tensor, i: int, batch: int) -> torch.Tensor:
    return times[i].expand(batch)


def progress_bar(total: int, progress, desc: str, iterable=None):
    """A tqdm bar of ``total`` steps over ``iterable`` or updated by hand (progress None: only on
    a terminal)."""
    return tqdm(iterable, total=total, desc=desc,
                disable=None if progress is None else not progress, leave=False)


def steps_bar(n: int, progress, desc: str):
    """range(n) with a tqdm bar (progress None: only on a terminal)."""
    return progress_bar(n, progress, desc, range(n))


def check_x(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise TypeError("x must be a floating tensor [B, ...] (x_T)")
    return x


def check_process_kind(process, kinds, sampler: str, hint: str = ""):
    if process.kind not in kinds:
        raise ValueError(f"the {sampler} sampler needs a {' or '.join(kinds)} process, got "
                         f"{process!r}{hint}")


"""``Denoiser``: the model as the samplers and the likelihoods call it (output normalized,
classifier-free and classifier guidance, a count of model evaluations). Below both, so neither
imports the other; ``pydiffuse.samplers.Denoiser`` is the same class."""

import torch

from ..ops import compute_dtype, lincomb
from ..ops._checks import check_number


class Denoiser:
    """The model as samplers and likelihoods call it: ``model(x, t, **model_kwargs)``, output
    normalized.

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
            logits = self.classifier(x_in, t)     # (half logits: softmax in float32)
            log_p = torch.log_softmax(logits.to(compute_dtype(logits.dtype)), dim=-1)
            labels = self._labels(len(x), log_p.shape[-1], x.device)
            chosen = log_p.gather(1, labels[:, None].long()).sum()
            grad, = torch.autograd.grad(chosen, x_in)
        return grad * self.classifier_scale

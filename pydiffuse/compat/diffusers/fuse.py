"""``fuse`` / ``unfuse``: a diffusers UNet, or the pipeline holding one, on pydiffuse's fused ops in
place, and back."""

import collections
import dataclasses
import logging

from diffusers import (DiffusionPipeline, UNet2DConditionModel,
                       UNet2DModel)
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from ...ops import unsupported_reason
from .attention import FusedAttnProcessor, attention_unfusable, head_dim
from .convolutions import PackedConv2d, conv_unfusable
from .norms import FoldedSiLU, FusedGroupNormSiLU, FusedResnetBlock2D, resnet_unfusable
from .schedulers import FUSED_SCHEDULERS

UNETS = (UNet2DModel, UNet2DConditionModel)
_RECORD = "_pydiffuse_fused"  # on the UNet: its swapped classes and processors
_SCHEDULER = "_pydiffuse_unfused_scheduler"  # on the pipeline: the scheduler it had
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FuseReport:
    """What ``fuse`` did: ``fused`` (module name -> what now runs on the fused ops) and
    ``unfused`` (module name -> why it runs as before). ``str()`` is a table."""

    fused: dict[str, str] = dataclasses.field(default_factory=dict)
    unfused: dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        counts = collections.Counter(self.fused.values())
        lines = [f"fused   {n:3d} x {what}" for what, n in counts.items()]
        lines += [f"unfused       {name}: {why}" for name, why in self.unfused.items()]
        return "\n".join(lines)


@dataclasses.dataclass
class _Record:
    classes: list  # (module, its class before fuse)
    processors: list  # (Attention, its processor before fuse)
    hooks: list  # handles of the forward hooks fuse added


def fuse(obj, *, norms: bool = True, attention: bool = True, convolutions: bool = True,
         scheduler: bool = True, return_report: bool = False):
    """Runs a diffusers ``UNet2DModel`` / ``UNet2DConditionModel``, or a ``DiffusionPipeline``
    whose ``unet`` is one (``DDPMPipeline``, ``DDIMPipeline``, ``StableDiffusionPipeline``, ...),
    on pydiffuse's fused ops, in place:

    - ``norms``: each ``ResnetBlock2D``'s GroupNorm + SiLU pairs (the scale-shift variant through
      the op's AdaGN ``scale``/``shift``) and the output ``conv_norm_out`` + ``conv_act`` as one
      ``group_norm(..., act="silu")`` pass each;
    - ``attention``: every ``Attention`` with diffusers' ``AttnProcessor2_0`` (self- and
      cross-attention) gets a ``FusedAttnProcessor`` (``Attention.set_processor``);
    - ``convolutions``: on the CPU, every ``Conv2d`` runs oneDNN on weights reordered once
      (``PackedConv2d``: channels_last activations, each ResNet block's residual added in its last
      convolution) when no gradient is tracked;
    - ``scheduler``: a pipeline's DDPM, DDIM, Euler, Euler ancestral, DPM-Solver multistep or
      PNDM scheduler becomes its drop-in of ``FUSED_SCHEDULERS`` with the same config (equal
      steps, noise from the pipeline's ``generator`` as diffusers draws it; without one,
      pydiffuse's noise stream instead of torch's global generator); other schedulers, and
      options a drop-in refuses, are kept and reported.

    The modules keep their parameters, names and ``state_dict``; ``unfuse`` restores them. What
    cannot run fused (another processor or block class, a head dim the device's backend does not
    run) is left as it is and listed in the report (logged when not returned); inputs the kernels
    do not take at call time (float64, an attention mask) run diffusers' own code.

    Returns:
        ``obj``, or ``(obj, FuseReport)`` with ``return_report``.

    Raises:
        TypeError: ``obj`` is not one of those diffusers objects. ValueError: it is fused already,
        or nothing in it can be fused.
    """
    pipeline = obj if isinstance(obj, DiffusionPipeline) else None
    unet = getattr(obj, "unet", None) if pipeline is not None else obj
    if not isinstance(unet, UNETS):
        what = (f"a {type(obj).__name__} whose unet is a {type(unet).__name__}"
                if pipeline is not None else f"a {type(obj).__module__}.{type(obj).__name__}")
        raise TypeError(f"fuse takes a diffusers UNet2DModel, UNet2DConditionModel or a "
                        f"DiffusionPipeline whose unet is one; got {what}")
    if hasattr(unet, _RECORD):
        raise ValueError(f"this {type(unet).__name__} is fused already (unfuse it first)")
    report = FuseReport()
    record = _Record([], [], [])
    if norms:
        _fuse_norms(unet, record, report)
    if attention:
        _fuse_attention(unet, record, report)
    if convolutions:
        _fuse_convolutions(unet, record, report)
    if scheduler and pipeline is not None:
        _fuse_scheduler(pipeline, report)
    if not report.fused:
        raise ValueError(f"nothing in this {type(obj).__name__} can be fused "
                         f"(norms={norms}, attention={attention}, convolutions={convolutions}, "
                         f"scheduler={scheduler}); "
                         + "; ".join(f"{k}: {v}" for k, v in report.unfused.items()))
    setattr(unet, _RECORD, record)
    if return_report:
        return obj, report
    if report.unfused:
        logger.warning("pydiffuse fuse left %d modules unfused:\n%s", len(report.unfused), report)
    else:
        logger.info("pydiffuse fuse:\n%s", report)
    return obj


def unfuse(obj):
    """Undoes ``fuse`` on ``obj`` (the UNet or pipeline given to it): the original classes,
    attention processors and scheduler, whose outputs are bit for bit those before ``fuse``.
    Returns ``obj``; ValueError when it is not fused."""
    pipeline = obj if isinstance(obj, DiffusionPipeline) else None
    unet = getattr(obj, "unet", None) if pipeline is not None else obj
    record = getattr(unet, _RECORD, None)
    if record is None:
        raise ValueError(f"this {type(obj).__name__} is not fused")
    for module, cls in record.classes:
        module.__class__ = cls
    for attn, processor in record.processors:
        attn.set_processor(processor)
    for hook in record.hooks:
        hook.remove()
    delattr(unet, _RECORD)
    if pipeline is not None and hasattr(pipeline, _SCHEDULER):
        pipeline.scheduler = getattr(pipeline, _SCHEDULER)
        delattr(pipeline, _SCHEDULER)
    return obj


def _swap(module: nn.Module, cls: type, record: _Record) -> None:
    record.classes.append((module, type(module)))
    module.__class__ = cls


def _fuse_norms(unet, record: _Record, report: FuseReport) -> None:
    for name, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D):
            why = resnet_unfusable(module)
            if why:
                report.unfused[name] = why
            else:
                _swap(module, FusedResnetBlock2D, record)
                report.fused[name] = "ResnetBlock2D: 2 GroupNorm + SiLU"
    norm, act = getattr(unet, "conv_norm_out", None), getattr(unet, "conv_act", None)
    if norm is None:
        return
    if type(norm) is nn.GroupNorm and type(act) is nn.SiLU:
        _swap(norm, FusedGroupNormSiLU, record)
        _swap(act, FoldedSiLU, record)
        report.fused["conv_norm_out"] = "output GroupNorm + SiLU"
    else:
        report.unfused["conv_norm_out"] = (f"a {type(norm).__name__} and a {type(act).__name__}, "
                                           "not a torch GroupNorm and SiLU")


def _fuse_attention(unet, record: _Record, report: FuseReport) -> None:
    param = next(unet.parameters())
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        why = (attention_unfusable(module)
               or unsupported_reason(param.device, param.dtype, head_dim=head_dim(module)))
        if why:
            report.unfused[name] = why
            continue
        record.processors.append((module, module.processor))
        module.set_processor(FusedAttnProcessor(module.processor))
        kind = "cross" if module.is_cross_attention else "self"
        report.fused[name] = f"{kind}-attention (+ its GroupNorm)" if module.group_norm \
            is not None else f"{kind}-attention"


def _fuse_convolutions(unet, record: _Record, report: FuseReport) -> None:
    device = next(unet.parameters()).device
    for name, module in unet.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        why = (f"on {device.type}: torch's convolution" if device.type != "cpu"
               else conv_unfusable(module))
        if why:
            report.unfused[name] = why
        else:
            _swap(module, PackedConv2d, record)
            report.fused[name] = "Conv2d on prepacked oneDNN weights"
    if any(cls is nn.Conv2d for _, cls in record.classes):
        record.hooks.append(unet.register_forward_hook(_contiguous_sample))


def _contiguous_sample(unet, args, output):
    """The UNet's output in torch's default layout, as diffusers returns it (the packed
    convolutions work in channels_last)."""
    if isinstance(output, tuple):
        return (output[0].contiguous(), *output[1:])
    output.sample = output.sample.contiguous()
    return output


def _fuse_scheduler(pipeline, report: FuseReport) -> None:
    """The pipeline's diffusers scheduler -> its drop-in of ``FUSED_SCHEDULERS`` (same config),
    unless the class has none or the drop-in refuses an option of the config."""
    old = getattr(pipeline, "scheduler", None)
    name = type(old).__name__
    fused = FUSED_SCHEDULERS.get(name) if type(old).__module__.startswith("diffusers.") else None
    refused = getattr(fused, "unsupported_options", lambda config: [])(old.config) if fused else []
    if fused is None or refused:
        why = (f"{name} has no fused step (fused: {', '.join(FUSED_SCHEDULERS)})" if fused is None
               else f"{fused.__name__} does not support {', '.join(refused)}")
        report.unfused["scheduler"] = why
        logger.info("pydiffuse fuse keeps the scheduler: %s", why)
        return
    setattr(pipeline, _SCHEDULER, old)
    pipeline.scheduler = fused.from_config(old.config)
    report.fused["scheduler"] = f"{name} -> {fused.__name__}"

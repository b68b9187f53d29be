"""The ``pydiffuse`` command: ``info``, ``bench``, ``demo``, ``train``, ``sample`` and
``likelihood``.

    pydiffuse info                       versions, CPU/GPU, how pydiffuse._C was built, backends
    pydiffuse bench [--quick] [...]      fused ops vs eager and torch.compile (pydiffuse.bench)
    pydiffuse demo                       the main job: the shipped digits model, every sampler
    pydiffuse train CONFIG.yaml          train what a run configuration names (configs/)
    pydiffuse sample --ckpt DIR --out F  sample a checkpoint into a PNG grid or .npz
    pydiffuse likelihood --ckpt DIR      bits/dim of data: VLB, probability-flow ODE, LSGM NELBO

Mistakes end in one line on stderr, ``pydiffuse <command>: <what is wrong>``, and exit code 2:
a bad argument (``--n 0``, ``--labels 1.5``, ``--device cuda`` without CUDA, ...), a missing or
malformed config, checkpoint or data file, an ``--out`` / ``--run-dir`` / ``--json`` that cannot
be written, a full disk. Each command checks its arguments and where it will write before any
work (before loading or sampling a model); a missing parent folder of an output is created
then, so only a path whose nearest existing folder is not a writable directory is refused.
argparse's own usage errors (an unknown flag, ``--n abc``) also exit 2, with the usage. Ctrl-C
prints ``pydiffuse <command>: interrupted`` and exits 130.

Which errors are one line: ``ValueError`` (pydiffuse's ``CheckpointError`` is one),
``OSError`` (missing files, permissions, ENOSPC), safetensors' I/O errors, and the
``TypeError`` / ``RuntimeError`` / ``KeyError`` that pydiffuse raises itself with a message
(a ``raise`` in pydiffuse's code). Anything else is a bug and keeps its traceback (exit 1), as
does a ``ValueError`` that Python raised inside pydiffuse's code (an unpacking error, say).
Set ``PYDIFFUSE_DEBUG=1`` to get the full traceback of every error.
"""

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

from .cli_checks import (
    DEBUG_ENV,
    CommandError,
    at_least,
    check_config,
    check_device,
    check_labels_for,
    check_seed,
    load_config,
    one_line,
    parse_labels,
    require,
    save_failure,
    shipped_configs,
    user_error,
)
from .utils import check_writable

EPILOG = (f"A mistake prints one line, 'pydiffuse COMMAND: problem', and exits 2 (Ctrl-C: 130); "
          f"{DEBUG_ENV}=1 shows the full traceback instead.")




def _configs_epilog() -> str:
    configs = shipped_configs()
    if not configs:
        return ("No configs/ directory found beside the package or here; the repository's "
                "configs/*.yaml are examples.\n\n" + EPILOG)
    lines = [f"shipped configs (in {configs[0].parent}):"]
    width = max(len(path.name) for path in configs) + 2
    for path in configs:
        try:
            head = path.read_text().splitlines()
        except (OSError, ValueError):
            head = []
        comment = " ".join(line.lstrip("# ").strip() for line in head[:3]
                           if line.startswith("#"))
        about = textwrap.shorten(comment.split(": ")[0], 56, placeholder=" ...")
        lines.append(f"  {path.name:<{width}}{about}")
    return "\n".join(lines) + "\n\n" + EPILOG


def _samplers_epilog(samplers) -> str:
    """Every registered sampler, one a line: its algorithm and paper."""
    width = max(map(len, samplers)) + 2
    lines = [f"  {name:<{width}}{s.title} ({s.paper})" for name, s in samplers.items()]
    return "samplers (--sampler NAME):\n" + "\n".join(lines) + "\n\n"


def _models_epilog() -> str:
    from pydiffuse.pipeline import SHIPPED

    names = ", ".join(f"{name} (trained by configs/{name}.yaml)" for name in SHIPPED)
    return (f"shipped models (--ckpt NAME): {names}; or a checkpoint <run_dir>/step_<N>, or a "
            f"run directory (its newest checkpoint).\n\n" + EPILOG)


def cmd_info(args) -> int:
    from pydiffuse import bench, ops

    m = bench.machine_info()
    torch_cuda = f" (CUDA {m['torch_cuda']})" if m["torch_cuda"] else " (no CUDA)"
    if m["gpu"]:
        count = "" if m["gpu_count"] == 1 else f", {m['gpu_count']} devices"
        gpu = (f"{m['gpu']} (compute capability {m['gpu_capability']}, "
               f"{m['gpu_memory_gib']} GiB{count})")
    else:
        gpu = "none visible to torch"
    built = m["pydiffuse_C"]
    compiled = built.get("error") or (
        f"with_cuda={built['with_cuda']}, cuda_archs={built['cuda_archs'] or '-'}, "
        f"compiler={built['compiler']}, philox_lanes={built['philox_lanes']}")
    for label, value in [("pydiffuse", m["pydiffuse"]),
                         ("python", f"{m['python']} ({m['platform']})"),
                         ("torch", m["torch"] + torch_cuda), ("triton", m["triton"]),
                         ("cpu", (f"{m['cpu']}, {m['cpu_count']} cores, "
                                  f"{m['torch_threads']} torch threads")),
                         ("gpu", gpu), ("pydiffuse._C", compiled)]:
        print(f"{label:<14}{value}")
    print("backends:")
    for name, state in ops.available_backends().items():
        print(f"  {name:<12}{state}")
    return 0


def cmd_bench(args) -> int:
    from pydiffuse import bench

    bench.run_from_args(args)
    return 0


def cmd_demo(args) -> int:
    at_least(args, {"n": 1})
    check_seed(args.seed)
    require(Path(args.out).suffix.lower() == ".png", f"--out must end in .png, got {args.out}")
    check_writable(args.out, "--out")
    from pydiffuse import demo

    demo.run(args.ckpt, n=args.n, seed=args.seed, out=args.out)
    return 0


def cmd_train(args) -> int:
    import shutil

    from pydiffuse import config

    at_least(args, {"steps": 1})
    cfg = load_config(args.config)
    check_config(cfg, args.config)
    run_dir = args.run_dir or f"runs/{cfg.get('name') or Path(args.config).stem}"
    check_writable(run_dir, "--run-dir", directory=True)
    try:
        trainer = config.train_from_config(cfg, run_dir, steps=args.steps, resume=args.resume,
                                           overwrite=args.overwrite)
    except Exception as err:
        if save_failure(err) is None:
            raise
        try:
            free = shutil.disk_usage(run_dir).free
            free = f"; {free / 2 ** 20:.0f} MiB free there now" if free >= 2 ** 20 else \
                f"; {free // 1024} KiB free there now"
        except OSError:
            free = ""
        raise CommandError(f"could not write a checkpoint in {run_dir}: {one_line(err)}{free} "
                           f"(the checkpoints already written are intact)") from err
    print(f"trained {trainer.step} steps; checkpoints in {run_dir} "
          f"(skipped steps: {trainer.skipped})")
    return 0


def cmd_sample(args) -> int:
    from pydiffuse import images, loading

    at_least(args, {"n": 1, "steps": 1})
    check_seed(args.seed)
    labels = None if args.labels is None else parse_labels(args.labels, args.n)
    require(args.guidance is None or labels is not None,
             "--guidance needs --labels (the classes to guide towards)")
    images.sample_format(args.out)
    check_writable(args.out, "--out")
    check_device(args.device)
    pipe = loading.load(args.ckpt, device=args.device)
    check_labels_for(pipe, labels, args.guidance, args.ckpt)
    options = {"sampler": args.sampler} if args.sampler else {}
    start = time.perf_counter()
    x = pipe.sample(args.n, steps=args.steps, seed=args.seed, labels=labels,
                    guidance=args.guidance, **options)
    seconds = time.perf_counter() - start
    try:
        path = images.save_samples(x, args.out, labels=labels)
    except OSError as err:
        raise CommandError(f"could not write --out {args.out}: {one_line(err)}") from err
    print(f"{args.n} samples in {seconds:.1f} s -> {path}")
    return 0


def likelihood_data(name: str, split: str, n: int):
    """(x, y or None, bins): the first n items of ``digits`` (17 levels: pixels 0..16) or of an
    ``.npz`` (``pydiffuse.data.npz_dataset``; 8-bit, 256 levels)."""
    from pydiffuse import data

    ds = data.digits(split) if name == "digits" else data.npz_dataset(name)
    tensors = ds.tensors
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    x = tensors[0][:n]
    y = tensors[1][:n] if len(tensors) > 1 else None
    return x, y, data.DIGITS_LEVELS if name == "digits" else 256


def cmd_likelihood(args) -> int:
    import math

    import torch

    from pydiffuse import likelihood, loading, lsgm

    at_least(args, {"n": 1, "batch_size": 1, "steps": 1, "bins": 2})
    check_seed(args.seed)
    for flag, value in (("--rtol", args.rtol), ("--atol", args.atol)):
        require(value > 0, f"{flag} must be > 0, got {value}")
    require(0 < args.eps < 1, f"--eps must be in (0, 1), got {args.eps}")
    if args.data != "digits":
        require(Path(args.data).is_file(), f"--data {args.data}: no such file (give 'digits' or "
                 f"an .npz of 8-bit images)")
    check_device(args.device)
    pipe = loading.load(args.ckpt, device=args.device)
    is_lsgm = isinstance(pipe, lsgm.LSGMPipeline)
    args.method = args.method or ("nelbo" if is_lsgm else "vlb")
    if is_lsgm != (args.method == "nelbo"):
        raise ValueError(f"--method {args.method} does not apply to this "
                         f"{'LSGM' if is_lsgm else 'diffusion'} checkpoint: use "
                         f"{'nelbo' if is_lsgm else 'vlb or ode'}")
    if args.method != "vlb" and args.steps is not None:
        raise ValueError("--steps respaces the vlb's chain; the ode chooses its own steps "
                         "(--rtol, --atol)")
    x, y, bins = likelihood_data(args.data, args.split, args.n)
    bins = args.bins or bins
    x = x.to(pipe.device)
    kwargs = {}
    null = getattr(pipe.model, "null_label", None)
    if null is not None:          # class-conditional: the data's labels, else the null label
        labels = torch.full((len(x),), null, dtype=torch.long) if y is None else y
        kwargs["model_kwargs"] = {"y": labels.to(pipe.device)}
    common = dict(prediction=pipe.prediction, batch_size=args.batch_size, seed=args.seed,
                  progress=None, bins=bins, **kwargs)
    start = time.perf_counter()
    if is_lsgm:                           # its decoder's levels are fixed by the model
        r = lsgm.nelbo(pipe.model, x, prior="ode", seed=args.seed, divergence=args.divergence,
                       rtol=args.rtol, atol=args.atol, batch_size=args.batch_size)
        bins = "the decoder's"
    elif args.method == "vlb":
        r = likelihood.vlb(pipe.model, pipe.process, x, variance=args.variance,
                           steps=args.steps, **common)
    else:
        r = likelihood.ode_nll(pipe.model, pipe.process, x, divergence=args.divergence,
                               probe=args.probe, rtol=args.rtol, atol=args.atol, eps=args.eps,
                               dequantize=True, **common)
    seconds = time.perf_counter() - start
    bpd = (r["bpd"] if is_lsgm else r.bpd).double()
    se = bpd.std().item() / math.sqrt(len(bpd)) if len(bpd) > 1 else float("nan")
    where = f"digits {args.split}" if args.data == "digits" else args.data
    print(f"{args.method}: {bpd.mean().item():.4f} +- {se:.4f} bits/dim (mean +- standard "
          f"error over {len(bpd)} {where} items, {bins} levels) in {seconds:.1f} s")
    if args.method == "vlb":
        to_bpd = 1 / (x[0].numel() * math.log(2))
        total = r.total.double().mean().item()
        for name, part in [("prior L_T", r.prior), ("L_0", r.terms[:, 0])]:
            nats = part.double().mean().item()
            print(f"  {name}: {nats * to_bpd:.3g} bits/dim ({100 * nats / total:.3g}% of the "
                  f"bound)")
    elif is_lsgm:
        for name in ("recon", "log_q", "prior"):
            print(f"  {name}: {r[name].double().mean().item():.3f} nats")
        print(f"  prior by the latent probability-flow ODE: {r['nfe']} model evaluations")
    else:
        print(f"  nll {r.nll.double().mean().item():.3f} nats, {r.nfe} model evaluations, "
              f"divergence {args.divergence}")
    return 0


def bench_parser() -> argparse.ArgumentParser:
    from pydiffuse import bench

    parser = argparse.ArgumentParser(prog="pydiffuse bench", add_help=False)
    bench.add_arguments(parser)
    return parser


class _Formatter(argparse.HelpFormatter):
    """Keeps the line breaks of a description or epilog (a list stays a list), wrapping each
    line on its own."""

    def _fill_text(self, text, width, indent):
        out = []
        for line in text.splitlines():
            lead = indent + line[:len(line) - len(line.lstrip())]
            more = "  " if line[:1].isspace() else ""     # an indented item hangs
            out.append(textwrap.fill(line.strip(), width, initial_indent=lead,
                                     subsequent_indent=lead + more) if line.strip() else "")
        return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pydiffuse", formatter_class=_Formatter, epilog=EPILOG,
        description="Fused diffusion-model kernels, samplers and trainers. "
                    "'pydiffuse COMMAND --help' for each command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = {"formatter_class": _Formatter, "epilog": EPILOG}
    sub.add_parser("info", help="versions, devices, build of pydiffuse._C, backends",
                   description="Print the versions (pydiffuse, Python, torch, Triton), the CPU "
                   "and GPU, how pydiffuse._C was built and which op backends can run here.",
                   **common).set_defaults(func=cmd_info)
    sub.add_parser("bench", parents=[bench_parser()],
                   help="time the fused ops vs PyTorch eager and torch.compile",
                   description="Time each fused op beside the same expression in PyTorch eager "
                   "and torch.compile, and against the measured copy bandwidth.",
                   **common).set_defaults(func=cmd_bench)
    demo = sub.add_parser("demo", help="the main job: sample the shipped digits model with "
                          "DDPM, DDIM, PC, ODE and CFG; a grid and a cost/quality table",
                          description="The main job: sample the shipped digits model (or "
                          "--ckpt, a class-conditional 8x8 digits model) with DDPM, DDIM, the "
                          "predictor-corrector and probability-flow ODE samplers and "
                          "classifier-free guidance, and the shipped LSGM; print the cost "
                          "(model evaluations, seconds) and quality (a digits classifier's "
                          "confidence, label entropy, Frechet distance) of each, and write "
                          "their samples as one labelled PNG grid.", **common)
    demo.add_argument("--ckpt", help="another checkpoint or run directory (default: shipped)")
    demo.add_argument("--n", type=int, default=400, help="samples per sampler (>= 1)")
    demo.add_argument("--seed", type=int, default=0, help="the noise stream's seed (64-bit)")
    demo.add_argument("--out", default="demo_digits.png",
                      help="the labelled grid, a .png (missing folders are created)")
    demo.set_defaults(func=cmd_demo)
    train = sub.add_parser("train", help="train the model a config file names (configs/*.yaml)",
                           description="Train what a YAML run configuration names (model "
                           "preset, process, prediction, objective, data, trainer settings): "
                           "checkpoints <run-dir>/step_<N>/ and the log <run-dir>/log.jsonl. "
                           "'pydiffuse sample --ckpt RUN_DIR' samples the newest checkpoint.",
                           formatter_class=_Formatter, epilog=_configs_epilog())
    train.add_argument("config", help="a YAML run configuration (e.g. configs/toy-ddpm.yaml)")
    train.add_argument("--run-dir", help="logs and checkpoints (default runs/<name>; missing "
                       "folders are created)")
    train.add_argument("--steps", type=int, help="training steps, >= 1 (default the config's)")
    again = train.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run already in the run directory (removed once this "
                            "run's first checkpoint is written)")
    train.set_defaults(func=cmd_train)
    from pydiffuse.samplers import SAMPLERS

    models = {"formatter_class": _Formatter, "epilog": _models_epilog()}
    smp = sub.add_parser("sample", help="sample a trained checkpoint into a PNG grid or .npz",
                         description="Sample a model (a shipped one, a checkpoint or a run "
                         "directory) with any sampler into a PNG grid (8 per row) or an .npz "
                         "(x [N, ...] in [-1, 1]; y, the labels, with --labels).",
                         **dict(models, epilog=_samplers_epilog(SAMPLERS) + models["epilog"]))
    smp.add_argument("--ckpt", required=True,
                     help="a checkpoint, a run directory, 'digits' or 'lsgm'")
    smp.add_argument("--sampler", choices=list(SAMPLERS), metavar="NAME",
                     help=f"{', '.join(SAMPLERS)} (listed below; default the config's)")
    smp.add_argument("--steps", type=int, help="sampler steps, >= 1 (default the config's)")
    smp.add_argument("--n", type=int, default=64, help="number of samples (>= 1)")
    smp.add_argument("--seed", type=int, default=0, help="the noise stream's seed (64-bit)")
    smp.add_argument("--labels", help="class-conditional models: integer class indices in "
                     "[0, classes), comma-separated: one for every sample, or --n of them "
                     "(digits: 0-9)")
    smp.add_argument("--guidance", type=float, help="classifier-free guidance 1 + w (needs "
                     "--labels)")
    smp.add_argument("--device", default=None, help="cpu or cuda[:N] (default cpu)")
    smp.add_argument("--out", required=True,
                     help="grid.png or samples.npz (missing folders are created)")
    smp.set_defaults(func=cmd_sample)
    lik = sub.add_parser("likelihood", help="bits/dim of data under a checkpoint: the VLB or the "
                         "probability-flow ODE", description="Bits per dimension of the data "
                         "under a model: 'vlb' the discrete-diffusion variational bound (L_0 on "
                         "the data's levels), 'ode' the probability-flow ODE's log-likelihood "
                         "with uniform dequantization (a DDPM-schedule model through its VP "
                         "SDE); 'nelbo' an LSGM's bound (its prior term by the latent ODE). "
                         "Prints the mean and its standard error.", **models)
    lik.add_argument("--ckpt", required=True,
                     help="a checkpoint, run directory, 'digits' or 'lsgm'")
    lik.add_argument("--method", choices=("vlb", "ode", "nelbo"), default=None,
                     help="default vlb (nelbo for an LSGM checkpoint)")
    lik.add_argument("--data", default="digits", help="'digits' or the path of an .npz of "
                     "8-bit images")
    lik.add_argument("--split", default="test", choices=("train", "test", "all"),
                     help="the digits split (default test)")
    lik.add_argument("--n", type=int, default=64, help="items (the first n of the split; >= 1)")
    lik.add_argument("--batch-size", type=int, default=None, help="items per model call (>= 1)")
    lik.add_argument("--seed", type=int, default=0, help="noise, probe and dequantization seed")
    lik.add_argument("--device", default=None, help="cpu or cuda[:N] (default cpu)")
    lik.add_argument("--bins", type=int, default=None,
                     help="the data's levels (default 17 for digits, 256 for .npz)")
    lik.add_argument("--steps", type=int, default=None, help="vlb: respace to this many steps")
    lik.add_argument("--variance", default=None,
                     choices=("fixed_small", "fixed_large", "learned_range"),
                     help="vlb's Sigma_t (default learned_range for a 2C-output model, else "
                          "fixed_small)")
    lik.add_argument("--divergence", default="hutchinson", choices=("hutchinson", "exact"))
    lik.add_argument("--probe", default="gaussian", choices=("gaussian", "rademacher"))
    lik.add_argument("--rtol", type=float, default=1e-5, help="ode solver tolerance")
    lik.add_argument("--atol", type=float, default=1e-5, help="ode solver tolerance")
    lik.add_argument("--eps", type=float, default=1e-5, help="ode start time")
    lik.set_defaults(func=cmd_likelihood)
    return parser


def main(argv=None) -> int:
    """The ``pydiffuse`` command; returns the exit code: 0, 2 for a mistake (one line on
    stderr), 130 for Ctrl-C. Bugs raise (a traceback); ``PYDIFFUSE_DEBUG=1`` raises all."""
    args = build_parser().parse_args(argv)
    debug = os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"pydiffuse {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = None if debug else user_error(err)
        if message is None:
            raise
        print(f"pydiffuse {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

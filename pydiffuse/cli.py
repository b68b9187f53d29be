"""The ``pydiffuse`` command: ``info``, ``bench``, ``demo``, ``train`` and ``sample``.

    pydiffuse info                       versions, CPU/GPU, how pydiffuse._C was built, backends
    pydiffuse bench [--quick] [...]      fused ops vs eager and torch.compile (pydiffuse.bench)
    pydiffuse demo                       the main job: the shipped digits model, every sampler
    pydiffuse train CONFIG.yaml          train what a run configuration names (configs/)
    pydiffuse sample --ckpt DIR --out F  sample a checkpoint into a PNG grid or .npz
    pydiffuse likelihood --ckpt DIR      bits/dim of data: VLB, probability-flow ODE, LSGM NELBO
"""

import argparse
import sys
import time
from pathlib import Path


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
        f"compiler={built['compiler']}")
    for label, value in [("pydiffuse", m["pydiffuse"]),
                         ("python", f"{m['python']} ({m['platform']})"),
                         ("torch", m["torch"] + torch_cuda), ("triton", m["triton"]),
                         ("cpu", f"{m['cpu']}, {m['cpu_count']} cores, "
                                 f"{m['torch_threads']} torch threads"),
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
    from pydiffuse import demo

    demo.run(args.ckpt, n=args.n, seed=args.seed, out=args.out)
    return 0


def cmd_train(args) -> int:
    from pydiffuse import config

    cfg = config.load_config(args.config)
    run_dir = args.run_dir or f"runs/{cfg.get('name') or Path(args.config).stem}"
    trainer = config.train_from_config(cfg, run_dir, steps=args.steps, resume=args.resume)
    print(f"trained {trainer.step} steps; checkpoints in {run_dir} "
          f"(skipped steps: {trainer.skipped})")
    return 0


def cmd_sample(args) -> int:
    from pydiffuse import images, pipeline

    pipe = pipeline.load(args.ckpt, device=args.device)
    labels = None if args.labels is None else [int(v) for v in args.labels.split(",")]
    options = {"sampler": args.sampler} if args.sampler else {}
    start = time.perf_counter()
    x = pipe.sample(args.n, steps=args.steps, seed=args.seed, labels=labels,
                    guidance=args.guidance, **options)
    seconds = time.perf_counter() - start
    path = images.save_samples(x, args.out, labels=labels)
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
    return x, y, 17 if name == "digits" else 256


def cmd_likelihood(args) -> int:
    import math

    import torch

    from pydiffuse import likelihood, lsgm, pipeline
    from pydiffuse.sde import VPSDE

    pipe = pipeline.load(args.ckpt, device=args.device)
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
        model, sde = pipe.model, pipe.process
        if sde.kind == "discrete":        # as Pipeline.sample runs "ode" on a DDPM schedule
            model, sde = pipeline.IndexTime(model, len(sde)), VPSDE.from_discrete(sde)
        r = likelihood.ode_nll(model, sde, x, divergence=args.divergence, probe=args.probe,
                               rtol=args.rtol, atol=args.atol, eps=args.eps, dequantize=True,
                               **common)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pydiffuse",
        description="Fused diffusion-model kernels, samplers and trainers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("info", help="versions, devices, build of pydiffuse._C, backends"
                   ).set_defaults(func=cmd_info)
    sub.add_parser("bench", parents=[bench_parser()],
                   help="time the fused ops vs PyTorch eager and torch.compile",
                   description="Time each fused op beside the same expression in PyTorch eager "
                   "and torch.compile, and against the measured copy bandwidth."
                   ).set_defaults(func=cmd_bench)
    demo = sub.add_parser("demo", help="the main job: sample the shipped digits model with "
                          "DDPM, DDIM, PC, ODE and CFG; a grid and a cost/quality table")
    demo.add_argument("--ckpt", help="another checkpoint or run directory (default: shipped)")
    demo.add_argument("--n", type=int, default=400, help="samples per sampler")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="demo_digits.png", help="the labelled PNG grid")
    demo.set_defaults(func=cmd_demo)
    train = sub.add_parser("train", help="train the model a config file names (configs/*.yaml)")
    train.add_argument("config", help="a YAML run configuration")
    train.add_argument("--run-dir", help="logs and checkpoints (default runs/<name>)")
    train.add_argument("--steps", type=int, help="training steps (default the config's)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    train.set_defaults(func=cmd_train)
    smp = sub.add_parser("sample", help="sample a trained checkpoint into a PNG grid or .npz")
    smp.add_argument("--ckpt", required=True, help="a checkpoint or run directory")
    smp.add_argument("--sampler", help="ddpm, ddim, ald, pc, ode, euler, heun, dpmpp_2m "
                     "(default the config's)")
    smp.add_argument("--steps", type=int, help="sampler steps (default the config's)")
    smp.add_argument("--n", type=int, default=64, help="number of samples")
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--labels", help="class labels, comma-separated (class-conditional models)")
    smp.add_argument("--guidance", type=float, help="classifier-free guidance 1 + w (with labels)")
    smp.add_argument("--device", default=None, help="cpu or cuda")
    smp.add_argument("--out", required=True, help="grid.png or samples.npz")
    smp.set_defaults(func=cmd_sample)
    lik = sub.add_parser("likelihood", help="bits/dim of data under a checkpoint: the VLB or the "
                         "probability-flow ODE", description="Bits per dimension of the data "
                         "under a model: 'vlb' the discrete-diffusion variational bound (L_0 on "
                         "the data's levels), 'ode' the probability-flow ODE's log-likelihood "
                         "with uniform dequantization (a DDPM-schedule model through its VP "
                         "SDE); 'nelbo' an LSGM's bound (its prior term by the latent ODE). "
                         "Prints the mean and its standard error.")
    lik.add_argument("--ckpt", required=True,
                     help="a checkpoint, run directory, 'digits' or 'lsgm'")
    lik.add_argument("--method", choices=("vlb", "ode", "nelbo"), default=None,
                     help="default vlb (nelbo for an LSGM checkpoint)")
    lik.add_argument("--data", default="digits", help="'digits' or an .npz of 8-bit images")
    lik.add_argument("--split", default="test", choices=("train", "test", "all"),
                     help="the digits split (default test)")
    lik.add_argument("--n", type=int, default=64, help="items (the first n of the split)")
    lik.add_argument("--batch-size", type=int, default=None, help="items per model call")
    lik.add_argument("--seed", type=int, default=0, help="noise, probe and dequantization seed")
    lik.add_argument("--device", default=None, help="cpu or cuda")
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
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as err:
        print(f"pydiffuse {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

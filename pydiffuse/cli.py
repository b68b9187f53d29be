"""The ``pydiffuse`` command: ``info``, ``bench``, ``demo``, ``train`` and ``sample``.

    pydiffuse info                       versions, CPU/GPU, how pydiffuse._C was built, backends
    pydiffuse bench [--quick] [...]      fused ops vs eager and torch.compile (pydiffuse.bench)
    pydiffuse demo                       the main job: the shipped digits model, every sampler
    pydiffuse train CONFIG.yaml          train what a run configuration names (configs/)
    pydiffuse sample --ckpt DIR --out F  sample a checkpoint into a PNG grid or .npz
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

"""`auglocal-launch`: plan, train and evaluate a local-learning run from the command line."""

from __future__ import annotations

import argparse
import sys
import time

from engine.config import RunConfig, UsageError, build_data, build_network, resolve, validate
from engine.precision import resolve_memory_format

EPILOG = """examples:
  auglocal-launch --model resnet32 --d 4 --epochs 3            # embedded MNIST-5k, in-process trainer
  auglocal-launch --model resnet110 --rule auglocal --d 4 --dry-run
  auglocal-launch --dataset cifar10 --data-dir ~/data --model resnet110 --d 4 --epochs 400
  auglocal-launch --preset cifar10-resnet32-auglocal-d4 --data-dir ~/data

exit codes: 0 success, 1 training failed, 2 bad input (unknown model/rule/data set, impossible d,
missing data directory)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="auglocal-launch",
        description="Train deep networks with supervised local learning (AugLocal, DGL, PredSim, InfoPro) "
                    "or end-to-end BP. Without a data set it trains on the embedded MNIST-5k digits.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model and learning rule")
    m.add_argument("--model", default="resnet32",
                   help="primary network: resnet20/32/56/110 (CIFAR), vgg19, vgg13, resnet34, resnet101, "
                        "mobilenetv2, efficientnet_b0, regnetx_400mf (default resnet32)")
    m.add_argument("--rule", default="auglocal", help="bp, auglocal, dgl, predsim or infopro (default auglocal)")
    m.add_argument("--d", type=int, default=4,
                   help="AugLocal aux-net depth in the paper's convention (hidden layers + classifier), >= 2")
    m.add_argument("--tau", type=float, default=None,
                   help="pyramidal decay rate in [0, 1]; default 0.5 for CIFAR-convention models, 0 otherwise")
    m.add_argument("--strategy", default="uniform",
                   help="aux layer choice: uniform (AugLocal), sequential, repetitive, conv1x1, conv3x3")
    m.add_argument("--convention", choices=("cifar", "imagenet"), default=None,
                   help="which layers are local (method.md 2): cifar = top d layers trained globally, "
                        "imagenet = every hidden layer local; default: the model family's")
    m.add_argument("--num-classes", type=int, default=None, help="output classes (default: the data set's)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="mnist5k",
                   help="mnist5k (embedded, default), digits (embedded), animal-mnist (embedded), synthetic, cifar10, "
                        "svhn, stl10, "
                        "imagenet")
    d.add_argument("--data-dir", default=None, help="folder holding the real data set (never downloaded)")
    d.add_argument("--input-size", type=int, default=None, help="image side (synthetic data; ImageNet resize)")
    d.add_argument("--train-size", type=int, default=None,
                   help="use only this many evenly spaced training images (quick runs, grids)")
    d.add_argument("--test-size", type=int, default=None, help="likewise for the test set")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=3, help="epochs (default 3)")
    t.add_argument("--batch-size", type=int, default=None, help="minibatch size (default: the data set's)")
    t.add_argument("--lr", type=float, default=None, help="initial learning rate (default: the data set's)")
    t.add_argument("--schedule", default="auto", choices=("auto", "cifar", "cosine", "imagenet", "constant"),
                   help="learning-rate schedule per epoch: cifar = the paper's warm-up + cosine (its last epoch "
                        "runs at lr 0), cosine = cosine from lr0 without reaching 0, imagenet = the same as "
                        "cosine; auto (default) = cifar from 50 epochs on, else cosine")
    t.add_argument("--warmup-epochs", type=int, default=None,
                   help="linear warm-up epochs (default 10 per 400 epochs, as in the paper)")
    t.add_argument("--seed", type=int, default=1234, help="seed of weights, batch order and augmentation")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many minibatches")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads of the in-process trainer")
    t.add_argument("--memory-format", default="auto",
                   help="layout of weights, aux nets and activations: auto (default: channels_last on CPU and "
                        "CUDA, measured faster), channels_last or contiguous (NCHW)")
    t.add_argument("--precision", default="fp32",
                   help="fp32 (default, the paper's), bf16 or fp16: autocast in every local module's forward "
                        "and loss, weights and optimizer state in fp32; activations travel in bf16/fp16 (half "
                        "the bytes per hop); fp16 scales each module's loss on its own")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="run folder (default runs/<model>-<rule>-<time>)")
    o.add_argument("--dry-run", action="store_true",
                   help="build everything, print the per-layer plan (aux nets, params, MACs) and exit")
    o.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    x = p.add_argument_group("execution")
    x.add_argument("--sequential", action="store_true",
                   help="train in this process with the sequential (reference) trainer instead of the pipeline")
    x.add_argument("--workers", default="auto",
                   help="pipeline workers: auto (one per GPU, or per CPU core), layer (one per local module) "
                        "or a number K (modules grouped into K balanced workers); default auto")
    x.add_argument("--gpus", default=None,
                   help="GPU ids for the workers, e.g. 0-9 or 0,2,3; 'cpu' for CPU cores (the default "
                        "when CUDA is absent)")
    x.add_argument("--balance", choices=("time", "flops"), default="time",
                   help="balance worker groups by measured module time (default) or by FLOPs")
    x.add_argument("--worker-threads", type=int, default=1, help="torch threads per CPU worker (default 1)")
    x.add_argument("--worker-malloc", choices=("return", "keep"), default="return",
                   help="(also for --sequential) return: workers give freed activations back to the OS "
                        "(glibc mmap threshold 64 KiB; "
                        "lowest memory, but on CPU about 2x slower from page faults); keep: glibc's default "
                        "heap reuse (fastest). Default return")
    x.add_argument("--trace", action="store_true",
                   help="write per-worker spans (trace_worker*.jsonl) and a Gantt chart gantt.png")
    e = p.add_argument_group("experiment presets")
    e.add_argument("--preset", metavar="NAME", default=None,
                   help="the paper's settings for one experiment, e.g. cifar10-resnet110-auglocal-d4; "
                        "flags given as well override it (see --list-presets)")
    e.add_argument("--list-presets", action="store_true", help="list the presets with their settings and exit")
    f = p.add_argument_group("failures and resuming")
    f.add_argument("--checkpoint-every", type=int, default=0,
                   help="commit a checkpoint every N minibatches (always at epoch ends); default 0 = epoch ends")
    f.add_argument("--heartbeat-timeout", type=float, default=120.0,
                   help="seconds a busy worker may stay silent before it counts as hung (default 120)")
    f.add_argument("--max-restarts", type=int, default=3,
                   help="restarts from the last committed checkpoint before giving up (default 3)")
    f.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue RUN_DIR from its last committed checkpoint (any --workers/--gpus)")
    f.add_argument("--inject-fault", metavar="FAULT", default=None,
                   help="fault injection for tests and demos, e.g. kill:worker=1:step=3, hang:worker=0:step=2, "
                        "slow:worker=1:delay=0.5, corrupt|truncated|foreign:worker=0:step=2, "
                        "kill-checkpoint:worker=1:checkpoint=2, kill-coordinator:step=4 (append :always to "
                        "repeat after restarts)")
    return p


#: settings that define what a run computes: --resume refuses a different value for any of them
RUN_IDENTITY = ("model", "rule", "d", "tau", "strategy", "convention", "dataset", "num_classes", "input_size",
                "train_size", "test_size", "schedule",
                "epochs", "batch_size", "lr", "warmup_epochs", "seed", "max_steps", "memory_format", "precision")


def explicit_args(argv: list[str] | None) -> set[str]:
    """Names of the options the user actually typed (argparse defaults hide that)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resume_config(args: argparse.Namespace, argv: list[str] | None) -> RunConfig:
    """The saved config of --resume RUN_DIR; refuses flags that would change what the run computes."""
    import json
    from pathlib import Path

    path = Path(args.resume) / "config.json"
    if not path.exists():
        raise UsageError(f"--resume {args.resume}: no run folder there (expected {path})")
    saved = RunConfig.from_dict(json.loads(path.read_text()))
    given = explicit_args(argv)
    field_of = {"warmup_epochs": "warmup"}
    for name in (n for n in RUN_IDENTITY if n in given):
        value, old = getattr(args, name), getattr(saved, field_of.get(name, name))
        if name == "memory_format":
            value = resolve_memory_format(value, saved.device)
        if value != old:
            raise UsageError(f"--resume {args.resume}: that run has --{name.replace('_', '-')} {old}, not {value}; "
                             "a checkpoint only continues the run it belongs to")
    return saved


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(model=args.model, rule=args.rule, d=args.d, tau=args.tau, strategy=args.strategy,
                     convention=args.convention, dataset=args.dataset, data_dir=args.data_dir,
                     num_classes=args.num_classes, input_size=args.input_size, train_size=args.train_size,
                     test_size=args.test_size, epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr, warmup=args.warmup_epochs, schedule=args.schedule,
                     seed=args.seed,
                     max_steps=args.max_steps, memory_format=args.memory_format, precision=args.precision)


def dry_run(cfg: RunConfig, data, args: argparse.Namespace) -> int:
    """Print the per-layer table and, unless --sequential, the worker partition and its prediction."""
    from engine.planning import format_plan_table, layer_costs

    model, aux = build_network(cfg, data)
    print(f"model {cfg.model} (L = {model.num_layers}), rule {cfg.rule}, d = {cfg.d}, tau = {cfg.tau}, "
          f"strategy {cfg.strategy}, {cfg.num_classes} classes, input {cfg.input_size}x{cfg.input_size}")
    print(format_plan_table(model, layer_costs(model, aux)))
    if not args.sequential:
        from launch.pipeline import plan_pipeline

        plan, placement, _ = plan_pipeline(cfg, data, pipeline_options(args))
        print()
        print(plan.format())
        print("devices: " + ", ".join(f"worker {r}: {d}" for r, d in enumerate(placement.devices)))
    return 0


def pipeline_options(args: argparse.Namespace):
    """--workers/--gpus/--balance/--worker-threads/--trace as PipelineOptions; CPU when CUDA is absent."""
    from launch.pipeline import PipelineOptions, parse_gpus

    if args.gpus is None:
        import torch

        if torch.cuda.is_available():
            args.gpus = ",".join(str(i) for i in range(torch.cuda.device_count()))
        else:
            print("auglocal-launch: no CUDA device found; workers run on CPU cores (--gpus cpu)")
    from workers.faults import fault_from_env, parse_fault

    try:
        fault = parse_fault(args.inject_fault) if args.inject_fault else fault_from_env()
    except ValueError as err:
        raise UsageError(str(err)) from err
    for name in ("checkpoint_every", "max_restarts"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
    if args.heartbeat_timeout <= 0:
        raise UsageError("--heartbeat-timeout must be > 0 seconds")
    return PipelineOptions(workers=args.workers, gpus=parse_gpus(args.gpus), balance=args.balance,
                           threads=args.worker_threads, trace=args.trace, checkpoint_every=args.checkpoint_every,
                           heartbeat_timeout=args.heartbeat_timeout, max_restarts=args.max_restarts, fault=fault,
                           malloc=args.worker_malloc)


def run_pipeline(args: argparse.Namespace, cfg: RunConfig, data) -> int:
    from launch.pipeline import train_pipeline

    return train_pipeline(cfg, data, pipeline_options(args), out=args.out, progress=not args.no_progress,
                          resume=bool(args.resume))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list_presets:
            from launch.presets import format_presets

            print(format_presets())
            return 0
        if args.resume:
            if args.sequential or args.dry_run:
                raise UsageError("--resume continues a pipelined run; it does not combine with --sequential/--dry-run")
            cfg = resume_config(args, argv)
            args.out = args.resume
        else:
            cfg = config_from_args(args)
            if args.preset:
                from launch.presets import apply_preset

                cfg = apply_preset(args.preset, cfg, explicit_args(argv))
        validate(cfg)
        data = build_data(cfg)
        resolve(cfg, data)
        if args.dry_run:
            return dry_run(cfg, data, args)
        if args.sequential:
            from launch.sequential import train_sequential

            return train_sequential(cfg, data, out=args.out, progress=not args.no_progress, threads=args.threads,
                                    malloc=args.worker_malloc)
        return run_pipeline(args, cfg, data)
    except UsageError as err:
        print(f"auglocal-launch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nauglocal-launch: interrupted at {time.strftime('%H:%M:%S')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`auglocal-launch`: plan, train and evaluate a local-learning run from the command line."""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import sys
import threading
import time
from collections.abc import Iterator

from auglocal.engine.config import RunConfig, UsageError, build_data, resolve, validate
from auglocal.launch.run import resume_flags, stop_request
from auglocal.launch.run.execution import dry_run, link_transport, pipeline_options  # noqa: F401 (the CLI's API)
from auglocal.launch.run.run_dir import resumable
from auglocal.launch.run.transport_choice import TRANSPORT_CHOICES

EPILOG = """examples:
  auglocal-launch --model resnet32 --d 4 --epochs 3            # embedded MNIST-5k, pipeline of one worker per core
  auglocal-launch --model resnet110 --rule auglocal --d 4 --dry-run
  auglocal-launch --model resnet32 --d 4 --epochs 3 --sequential   # the in-process reference trainer
  auglocal-launch --dataset cifar10 --data-dir ~/data --model resnet110 --d 4 --epochs 400
  auglocal-launch --preset cifar10-resnet32-auglocal-d4 --data-dir ~/data

exit codes: 0 success; 1 training failed (a worker kept failing, a full disk, no intact checkpoint);
2 bad input (unknown model/rule/data set, impossible d or flag value, missing data directory or image,
a run folder that holds another run or is in use, a checkpoint of another run); 130 interrupted (Ctrl-C),
143 terminated (SIGTERM). Where resuming helps, the message ends with the --resume command.

documentation (paths in the repository):
  README.md            install, quick start, the layout
  docs/command-line.md every flag; docs/failures.md: failures and resuming
  docs/method.md       the method as implemented: selection, pyramid, strides and channels, baselines,
                       conventions, hyper-parameters, and the paper's tables we reproduce
  docs/run-folder.md   every file a run writes (metrics.jsonl, checkpoints/, layers/, traces, TensorBoard)
  docs/metrics.md      what the progress bar, the pictures and TensorBoard show"""


def fault_help() -> str:
    from auglocal.workers.runtime.faults import help_text

    return help_text().replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="auglocal-launch",
        description="Train deep networks with supervised local learning (AugLocal, DGL, PredSim, InfoPro) "
                    "or end-to-end BP. Without a data set it trains on the embedded MNIST-5k digits.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model and learning rule")
    m.add_argument("--model", default="resnet32",
                   help="primary network: resnet20/32/56/110 (CIFAR), vgg19, vgg13, resnet34, resnet101, "
                        "mobilenetv2, efficientnet_b0, regnetx_400mf, vit_tiny (a CPU-sized ViT), vit_b_16, vit_b_32, "
                        "vit_l_16 (default resnet32), or your own: "
                        "package.module:function or path/file.py:function, a function returning a LayeredModel "
                        "or (blocks, head) (docs/api.md)")
    m.add_argument("--rule", default="auglocal", help="bp, auglocal, dgl, predsim or infopro (default auglocal)")
    m.add_argument("--d", type=int, default=4,
                   help="AugLocal aux-net depth in the paper's convention (hidden layers + classifier), >= 2")
    m.add_argument("--tau", type=float, default=None,
                   help="pyramidal decay rate in [0, 1]; default 0.5 for CIFAR-convention models, 0 otherwise")
    m.add_argument("--strategy", default="uniform",
                   help="aux layer choice: uniform (AugLocal), sequential, repetitive, conv1x1, conv3x3")
    m.add_argument("--convention", choices=("cifar", "imagenet"), default=None,
                   help="which layers are local (docs/method.md 2): cifar = top d layers trained globally, "
                        "imagenet = every hidden layer local; default: the model family's")
    m.add_argument("--dgl-pool", default="dgl",
                   help="DGL's first pool: dgl (default, DGL's own code: ceil(S/4) of the layer's size S) or auglocal "
                        "(the AugLocal ImageNet code: S of the first layer as wide; VGG13 layer 8: 7x7, not 4x4)")
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
    t.add_argument("--lr", type=float, default=None,
                   help="initial learning rate (default: the data set's with sgd, 0.001 with adamw)")
    t.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"),
                   help="sgd (default, the paper's: Nesterov momentum 0.9, weight decay 1e-4) or adamw (betas "
                        "0.9/0.999, decoupled weight decay 0.05; what transformers are trained with); aux nets "
                        "always use their layer's")
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
    t.add_argument("--nonfinite", choices=("stop", "skip"), default="stop",
                   help="a local module's loss or gradient is nan/inf: stop (default) = stop the run at that step "
                        "naming step, worker and layer (exit 1); skip = skip that module's update for that step "
                        "and count it (summary.json: skipped); --resume may change it (docs/divergence.md)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, help="run folder (default runs/<model>-<rule>-<time>)")
    o.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out folder that already holds one, removing that run's files")
    o.add_argument("--dry-run", action="store_true",
                   help="build everything, print the per-layer plan (aux nets, params, MACs) and the worker "
                        "partition, and exit; takes seconds (it times modules only with --balance time)")
    o.add_argument("--macs", default="engine",
                   help="how --dry-run counts MACs: engine (default: conv, linear, matmul of every aux loss) or paper "
                        "(as fvcore counts the paper's tables: batch norm and pooling too, aux classifier paths)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in logs)")
    o.add_argument("--no-tensorboard", action="store_true",
                   help="do not write TensorBoard event files (run_dir/tensorboard/; written by default when "
                        "the tensorboard package is installed: pip install -e '.[tensorboard]')")
    x = p.add_argument_group("execution")
    x.add_argument("--sequential", action="store_true",
                   help="train in this process with the sequential (reference) trainer instead of the pipeline")
    x.add_argument("--workers", default="auto",
                   help="pipeline workers: auto (one per GPU, or per CPU core), layer (one per local module) "
                        "or a number K (modules grouped into K balanced workers); default auto")
    x.add_argument("--gpus", default=None,
                   help="GPU ids for the workers, e.g. 0-9 or 0,2,3; 'cpu' for CPU cores (the default "
                        "when CUDA is absent)")
    x.add_argument("--balance", choices=("auto", "time", "flops"), default="auto",
                   help="what worker groups are balanced by: time = time every module now (and cache the "
                        "times in ~/.cache/auglocal/ for this machine); flops = forward+backward FLOPs "
                        "(instant); auto (default) = the cached times of an earlier run on this machine, "
                        "else measure them for a training run and use FLOPs for a --dry-run")
    x.add_argument("--replicas", default="1", metavar="R",
                   help="R copies of the K-worker pipeline (R x K workers; also with --sequential, as its "
                        "oracle): each minibatch is split into R shards (the batch size stays --batch-size), each "
                        "local module's gradients are averaged over its R replicas after its backward, then every "
                        "replica steps (docs/method.md 6.1); --workers auto then gives each replica its share of the "
                        "GPUs or cores; default 1; auto is reserved for the planner")
    x.add_argument("--worker-threads", type=int, default=1, help="torch threads per CPU worker (default 1)")
    x.add_argument("--worker-kind", choices=("process", "thread", "auto"), default=None,
                   help="default: thread with --streams-per-gpu above 1 (stream workers of one GPU share a host), "
                        "else process; process: each worker is a process of its own; thread: consecutive workers of "
                        "one device run as threads of a host process and pass activations by reference (far "
                        "less memory with many workers, e.g. --workers layer; a failure restarts the whole "
                        "pipeline); auto: thread where measured faster (benchmarks/results/threads.md, 2-core "
                        "machine): on CPU with more workers than cores (ResNet-110 --workers layer: 0.11x the "
                        "memory, faster start), on a GPU with --streams-per-gpu above 1; else process (ResNet-32 "
                        "d=4 K=2: threads were not faster than processes)")
    x.add_argument("--workers-per-host", type=int, default=0, metavar="N",
                   help="thread workers: at most N consecutive workers per host process (default 0: all the "
                        "workers of one device share one host)")
    x.add_argument("--streams-per-gpu", type=int, default=0, metavar="N",
                   help="N thread workers on each GPU, each with its own CUDA stream, one host process per GPU "
                        "(--workers auto then means N x GPUs); default 0: one process worker per GPU")
    x.add_argument("--worker-malloc", choices=("return", "keep"), default="keep",
                   help="(also for --sequential) keep (default): glibc's default heap reuse (fastest); "
                        "return: give freed activations back to the OS (glibc mmap threshold 64 KiB; lower "
                        "resident memory, but on CPU about 2x slower from page faults)")
    x.add_argument("--transport", choices=TRANSPORT_CHOICES, default="auto",
                   help="how links between processes move tensors: auto (default; ipc on one host, as before; "
                        "with --elastic curve between CPU ranks, nccl/cuda-ipc between GPUs), ipc, tcp (no "
                        "encryption: loopback, or private networks only), curve (tcp + CurveZMQ, fresh keys per "
                        "attempt); gloo, nccl and cuda-ipc links are wired by --elastic only; cuda-ipc and nccl "
                        "need GPU workers (exit 2 otherwise)")
    x.add_argument("--cuda-graphs", action="store_true",
                   help="GPU workers capture their train step (forward, aux forward/backward, optimizer step) as "
                        "CUDA graphs once its shapes are static and replay it; a step that cannot be captured "
                        "(another shape, such as the last partial minibatch, random ops, fp16/bf16, an op that "
                        "fails to capture) runs eagerly, said in one line. Same results; off by default until "
                        "measured on a GPU. Needs --gpus (exit 2 on CPU workers or with --sequential)")
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
    f.add_argument("--recovery", choices=("one", "all"), default="one",
                   help="after a worker fails: one = restart only that worker (the others keep running; its "
                        "upstream resends its replay log), falling back to all where that cannot work; all = "
                        "restart every worker from the last committed checkpoint (default one)")
    f.add_argument("--spares", type=int, default=1,
                   help="warm spare worker processes started with the run (process workers on one host, "
                        "--recovery one): a spare has its process set up and the network built, and takes a "
                        "failed worker's place, so that recovery is loading its layer files and replaying; "
                        "another is started once the pipeline has caught up. 0 = start each replacement cold "
                        "(default 1)")
    f.add_argument("--replay-log-mb", type=float, default=256.0,
                   help="memory bound of each worker's replay log in MiB; past it the log spills to files "
                        "(default 256)")
    f.add_argument("--replay-spill-dir", default=None,
                   help="folder for spilled replay logs (default: the run's private temporary folder)")
    f.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue RUN_DIR from its last committed checkpoint (any --workers/--gpus)")
    f.add_argument("--inject-fault", metavar="FAULT", default=None,
                   help="fault injection for tests and demos (or AUGLOCAL_INJECT_FAULT): " + fault_help())
    f.add_argument("--cleanup", action="store_true",
                   help="remove socket folders left by launchers that were killed, print them and exit")
    from auglocal.launch.backends.elastic import add_flags

    add_flags(p)
    return p


def explicit_args(argv: list[str] | None) -> set[str]:
    """Names of the options the user actually typed (argparse defaults hide that)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resume_config(args: argparse.Namespace, argv: list[str] | None) -> RunConfig:
    """The saved config of --resume RUN_DIR; refuses flags that would change what the run computes."""
    return resume_flags.resume_config(args, explicit_args(argv))


def run_pipeline(args: argparse.Namespace, cfg: RunConfig, data, opts) -> int:
    """Train with `opts` (pipeline_options, checked before the run folder was claimed)."""
    from auglocal.launch.run.pipeline import train_pipeline

    if args.elastic:
        from auglocal.launch.backends.elastic import train_elastic

        return train_elastic(args.elastic_rank, cfg, data, opts, out=args.out,
                             progress=not args.no_progress, resume=bool(args.resume))

    return train_pipeline(cfg, data, opts, out=args.out, progress=not args.no_progress,
                          resume=bool(args.resume))


#: OSError numbers the machine or the user causes (space, permissions, I/O): one line, exit 1
MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOTDIR,
                  errno.EISDIR, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE)


def _say(message: str, args: argparse.Namespace, *, hint: str | None = None) -> None:
    """One line on stderr: the message, then the resume command when resuming can help."""
    if resumable(args.out, args.sequential):
        message += f"; resume with: auglocal-launch --resume {args.out}"
    elif hint:
        message += f"; {hint}"
    print(f"auglocal-launch: {message}", file=sys.stderr)


def cleanup(quiet: bool = False) -> int:
    """--cleanup: remove socket folders of launchers that are gone."""
    from auglocal.launch.backends.one_host.sockets import cleanup_stale

    removed = cleanup_stale()
    for path in removed:
        print(f"removed stale socket folder {path}")
    if not quiet:
        print(f"auglocal-launch --cleanup: removed {len(removed)} stale socket folder(s)")
    return 0


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop the run cleanly (every worker stopped, files whole) while it lasts: both raise in
    the main thread (stop_request.py); the handlers before are put back afterwards."""
    in_main_thread = threading.current_thread() is threading.main_thread()      # signals reach only that one
    previous = ({sig: signal.signal(sig, stop_request.on_signal) for sig in stop_request.SIGNALS}
                if in_main_thread else {})
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        stop_request.handled()     # a stop lost where no coordinator polled must not end the next run here


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stop_signals():
        return _exit_code(args, argv)


def _exit_code(args: argparse.Namespace, argv: list[str] | None) -> int:
    """run() with every expected failure as one line on stderr and the documented exit code."""
    try:
        return run(args, argv)
    except UsageError as err:
        print(f"auglocal-launch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        stop_request.handled()
        what = "terminated (SIGTERM)" if isinstance(err, stop_request.Terminated) else "interrupted"
        print(file=sys.stderr)
        stopped = "" if args.sequential else "; every worker stopped"
        waiting = getattr(getattr(args, "elastic_rank", None), "waiting", None)    # torchrun: what rank 0 awaited
        _say(f"{what} at {time.strftime('%H:%M:%S')}{' while ' + waiting if waiting else stopped}", args)
        return 143 if isinstance(err, stop_request.Terminated) else 130
    except Exception as err:
        from auglocal.engine.atomic import DiskFullError, describe_io_error
        from auglocal.engine.data.imagenet import ImageDecodeError
        from auglocal.launch.run.checkpoints import CheckpointError

        if isinstance(err, ImageDecodeError):
            _say(f"error: {err}", args)
            return 2
        if isinstance(err, CheckpointError):
            print(f"auglocal-launch: error: {err}", file=sys.stderr)
            return 1
        if isinstance(err, OSError) and err.errno in MACHINE_ERRNOS:
            line = str(err) if isinstance(err, DiskFullError) or not err.filename else describe_io_error(err)
            _say(f"error: {line}", args,
                 hint="run it again with --overwrite once fixed")
            return 1
        raise


def run(args: argparse.Namespace, argv: list[str] | None, data=None) -> int:
    """What the command line does with its parsed flags (`argv`: the tokens, for which flags were given); the
    exit code, or an exception. `data`: a DataSource to train on instead of --dataset (auglocal.train's)."""
    if args.list_presets:
        from auglocal.launch.run.presets import format_presets

        print(format_presets())
        return 0
    if args.cleanup:
        return cleanup()
    if args.elastic:
        from auglocal.launch.backends.elastic import ElasticRank

        args.elastic_rank = ElasticRank.join(args)
        if not args.elastic_rank.is_coordinator:
            return args.elastic_rank.serve()
        args.elastic_rank.continue_after_restart(args)
    overrides: dict = {}
    if args.resume:
        if args.sequential or args.dry_run or args.overwrite:
            raise UsageError("--resume continues a pipelined run; it does not combine with --sequential, --dry-run "
                             "or --overwrite")
        cfg = resume_config(args, argv)
        args.out = args.resume
        overrides = resume_flags.restore_runtime(args, explicit_args(argv))
    else:
        cfg = resume_flags.config_from_args(args)
        if args.preset:
            from auglocal.launch.run.presets import apply_preset

            cfg = apply_preset(args.preset, cfg, explicit_args(argv))
    resume_flags.adopt_data(cfg, data, args.resume)     # a user's Dataset: recorded in, or checked against, cfg
    validate(cfg)
    resume_flags.validate_runtime(args)
    if args.sequential and args.cuda_graphs:
        raise UsageError("--cuda-graphs captures pipeline workers' steps; it does not combine with --sequential")
    if args.dry_run:
        data = build_data(cfg) if data is None else data
        resolve(cfg, data)
        return dry_run(cfg, data, args)
    from auglocal.launch.run.run_dir import claim_run_folder, default_run_dir, record_data

    # every runtime flag (transport, GPUs, faults, worker kind) is checked before a run folder exists: a bad
    # flag exits 2 without leaving a half-made run behind
    opts = None if args.sequential else pipeline_options(args)
    args.out = str(args.out or default_run_dir(cfg.model, cfg.rule))
    from auglocal.launch.run.preflight import preflight

    data = preflight(args, cfg, opts, data)     # the socket root, the data, --workers, --out: before the claim
    from auglocal.launch.run.replicas import check_replicas, resolve_replicas

    check_replicas(cfg, data, resolve_replicas(args))
    with claim_run_folder(args.out, resume=bool(args.resume), overwrite=args.overwrite):
        resume_flags.record_runtime(args, overrides)
        record_data(args.out, cfg, data)
        if args.resume:
            resume_flags.record_nonfinite(args.out, cfg.nonfinite)
        if overrides:
            print("auglocal-launch: resuming with " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                for k, v in overrides.items()))
        if args.sequential:
            from auglocal.launch.run.sequential import sequential_device, train_sequential

            cfg.device = sequential_device(args.gpus)

            return train_sequential(cfg, data, out=args.out, progress=not args.no_progress, threads=args.threads,
                                    malloc=args.worker_malloc, tensorboard=not args.no_tensorboard,
                                    replicas=resolve_replicas(args))
        cleanup(quiet=True)
        return run_pipeline(args, cfg, data, opts)


if __name__ == "__main__":
    sys.exit(main())

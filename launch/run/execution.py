"""The execution flags of a parsed command line as what runs them: the dry run's report and the pipeline's
options, checked (UsageError, exit 2) before a run folder is claimed. The CLI and auglocal.train share them."""

from __future__ import annotations

import argparse

from auglocal.engine.config import RunConfig, UsageError, build_network
from auglocal.launch.run import resume_flags
from auglocal.launch.run.transport_choice import check_possible, elastic_transport, one_host_transport


def dry_run(cfg: RunConfig, data, args: argparse.Namespace) -> int:
    """Print the per-layer table and, unless --sequential, the worker partition and its prediction."""
    from auglocal.engine.planning import format_plan_table, layer_costs

    model, aux = build_network(cfg, data)
    print(f"model {cfg.model} (L = {model.num_layers}), rule {cfg.rule}, d = {cfg.d}, tau = {cfg.tau}, "
          f"strategy {cfg.strategy}, {cfg.num_classes} classes, input {cfg.input_size}x{cfg.input_size}")
    print(format_plan_table(model, layer_costs(model, aux, macs=args.macs), macs=args.macs))
    if not args.sequential:
        from auglocal.launch.run.pipeline import plan_pipeline

        resolved = argparse.Namespace(**vars(args))   # --replicas auto resolved here; `args` keeps "auto" for the table
        plan, placement, _ = plan_pipeline(cfg, data, pipeline_options(resolved), measure=False, network=(model, aux))
        print()
        print(plan.format())
        from auglocal.engine.planning.simulator import dry_run_line
        from auglocal.launch.run.hosts import describe_hosts, gpu_sharing

        print(dry_run_line(cfg, data, plan, cpu_workers=not placement.devices[0].startswith("cuda"),
                           shared=gpu_sharing(placement.devices), network=(model, aux)))
        print("devices: " + ", ".join(f"worker {r}: {d}" for r, d in enumerate(placement.devices)))
        print(describe_hosts(placement.hosts, placement.devices))
        from auglocal.launch.run.layout_choice import dry_run_table

        table = dry_run_table(cfg, data, args, plan, placement, (model, aux))   # None unless --replicas R > 1 / auto
        if table:
            print(table)
    from auglocal.launch.run.replicas import describe_replicas, resolve_replicas

    if (replicas := resolve_replicas(args if args.sequential else resolved)) > 1:
        print(describe_replicas(replicas, cfg.batch_size, None if args.sequential else len(plan.groups)))
    from auglocal.engine.feed import FeedShape, format_feed

    shape = FeedShape(cfg.epochs, data.steps_per_epoch(cfg.batch_size), data.num_test_batches(cfg.batch_size),
                      cfg.max_steps, getattr(args, "checkpoint_every", 0))
    print("\nfeed plan (the order both trainers follow), first events:")
    print(format_feed(shape))
    return 0


def choose_replicas(args: argparse.Namespace, devices: int | None = None, cfg: RunConfig | None = None,
                    data=None) -> tuple[int, int]:
    """(R, K) for `--replicas auto`: the layout of R x K <= `devices` with the most predicted images/s (K fixed
    when --workers is a number). `devices`: GPUs of --gpus, else CPU cores. Plans without timing anything
    new (as a dry run does: cached module times, else MACs)."""
    import os

    from auglocal.engine.config import build_data, resolve
    from auglocal.engine.local_module import build_local_modules
    from auglocal.launch.run import resume_flags
    from auglocal.launch.run.layout_choice import layout_choice
    from auglocal.launch.run.pipeline import plan_pipeline

    if cfg is None:
        cfg = resume_flags.config_from_args(args)
    if data is None:
        data = build_data(cfg)
        resolve(cfg, data)
    network = build_network(cfg, data)
    # the pipeline options of one replica: pipeline_options resolves --replicas, which for auto calls this
    opts = pipeline_options(argparse.Namespace(**{**vars(args), "replicas": 1}))
    plan, placement, _ = plan_pipeline(cfg, data, opts, measure=False, network=network)
    on_gpu = placement.devices[0].startswith("cuda")
    if devices is None:
        devices = len(opts.gpus) if opts.gpus else (os.cpu_count() or 1)
    fixed_k = plan.k if str(args.workers) != "auto" else None
    choice, _ = layout_choice(cfg, data, plan, build_local_modules(*network), devices, on_gpu, "auto", fixed_k)
    return choice.best.replicas, choice.best.k


def choose_layout(args: argparse.Namespace) -> None:
    """--replicas auto: the planner's (R, K) written back into `args` (--replicas R, and --workers K where that
    was auto too), so the run, its runtime.json and a later --resume use what ran."""
    replicas, k = choose_replicas(args)
    args.replicas = str(replicas)
    if str(args.workers) == "auto":
        args.workers = str(k)
    print(f"auglocal-launch: --replicas auto: {replicas} replica(s) of a {k}-worker pipeline (the planner's best "
          "predicted layout; --dry-run --replicas auto shows the candidates)", flush=True)


def pipeline_options(args: argparse.Namespace):
    """--workers/--gpus/--balance/--worker-threads/--trace as PipelineOptions; CPU when CUDA is absent."""
    from auglocal.launch.run.devices import parse_gpus
    from auglocal.launch.run.pipeline import PipelineOptions

    gpus_text = args.gpus   # args keeps what was asked: runtime.json records that, not this machine's GPUs
    if gpus_text is None:
        import torch

        if torch.cuda.is_available():
            gpus_text = ",".join(str(i) for i in range(torch.cuda.device_count()))
        else:
            print("auglocal-launch: no CUDA device found; workers run on CPU cores (--gpus cpu)")
    from auglocal.workers.runtime.faults import fault_from_env, parse_fault

    try:
        fault = parse_fault(args.inject_fault) if args.inject_fault else fault_from_env()
    except ValueError as err:
        raise UsageError(str(err)) from err
    resume_flags.validate_runtime(args)
    transport = link_transport(args, gpus_text)
    if not args.replay_log_mb >= 0 or args.replay_log_mb == float("inf"):
        raise UsageError(f"--replay-log-mb must be a finite number >= 0 (0: every logged message goes to a file), "
                         f"got {args.replay_log_mb}")
    gpus = parse_gpus(gpus_text)
    if args.cuda_graphs and not gpus:
        raise UsageError("--cuda-graphs captures GPU workers' steps as CUDA graphs; these workers run on the CPU "
                         "(give --gpus with CUDA devices, or leave --cuda-graphs out)")
    from auglocal.launch.run.hosts import resolve_kind
    from auglocal.launch.run.replicas import replicas_value, resolve_replicas

    resolve_kind(args.worker_kind, gpus, args.streams_per_gpu)   # bad combinations: exit 2 now
    if replicas_value(args) == "auto":
        choose_layout(args)
    replicas = resolve_replicas(args)
    if args.cuda_graphs and replicas > 1:
        raise UsageError(f"--cuda-graphs with --replicas {replicas}: the gradient all-reduce between a module's "
                         "backward and its optimizer step is not captured; leave one of them out")
    return PipelineOptions(workers=args.workers, gpus=gpus, balance=args.balance,
                           threads=args.worker_threads, trace=args.trace, checkpoint_every=args.checkpoint_every,
                           heartbeat_timeout=args.heartbeat_timeout, max_restarts=args.max_restarts, fault=fault,
                           malloc=args.worker_malloc, tensorboard=not args.no_tensorboard, recovery=args.recovery,
                           replay_log_mb=args.replay_log_mb, replay_spill_dir=args.replay_spill_dir,
                           transport=transport, worker_kind=args.worker_kind,
                           workers_per_host=args.workers_per_host, streams_per_gpu=args.streams_per_gpu,
                           spares=args.spares, cuda_graphs=args.cuda_graphs, replicas=replicas)


def link_transport(args: argparse.Namespace, gpus_text: str | None) -> str:
    """--transport checked against the workers' devices and resolved for this launcher (exit 2 if impossible)."""
    import torch
    from auglocal.launch.run.devices import parse_gpus

    try:
        devices = parse_gpus(gpus_text)
    except ValueError:
        devices = []   # pipeline_options reports a bad --gpus itself
    try:
        check_possible(args.transport, devices, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        if getattr(args, "elastic", False):
            return elastic_transport(args.transport)
        return one_host_transport(args.transport)
    except ValueError as err:
        raise UsageError(str(err)) from err

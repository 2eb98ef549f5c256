"""The pipelined run behind `auglocal-launch`: placement, partition, progress, run folder."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from auglocal.engine.config import RunConfig, UsageError, build_network
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.planning import CostKey, PipelinePlan, choose_module_costs, layer_output_shapes, make_plan
from auglocal.engine.precision import Kernels
from auglocal.engine.trainer import EpochRecord, StepRecord
from auglocal.launch.backends.base import Backend
from auglocal.launch.backends.registry import BY_NAME, ONE_HOST
from auglocal.launch.report.plots import plot_run
from auglocal.launch.report.tensorboard import TensorBoardSink
from auglocal.launch.report.worker_usage import UsageSampler
from auglocal.launch.run.checkpoints import CheckpointStore, start_identity
from auglocal.launch.run.coordinator import (
    AttemptOptions,
    Coordinator,
    Placement,
    Position,
    RunCounters,
    WorkerFailed,
)
from auglocal.launch.run.devices import one_host_devices
from auglocal.launch.run.hosts import describe_hosts, host_groups, resolve_kind
from auglocal.launch.run.progress import EpochTracker, PipelineStats, TrackerState, epoch_line
from auglocal.launch.run.replicas import describe_replicas, replicas_summary, replicate
from auglocal.launch.run.run_dir import RunDir, default_run_dir
from auglocal.launch.run.sequential import save_networks
from auglocal.workers.runtime.faults import Fault, check_target
from tqdm import tqdm


@dataclass
class PipelineOptions:
    """How the run is spread over processes and how it survives failures (flags of the same names)."""

    workers: str = "auto"          # 'auto' | 'layer' | an integer K as a string
    gpus: list[str] | None = None  # e.g. ['cuda:0', 'cuda:1']; None or [] = CPU
    balance: str = "auto"          # 'auto' (cached times, else measured), 'time' (measure now) or 'flops'
    threads: int = 1               # intra-op threads per CPU worker
    trace: bool = False
    window: int = 2
    checkpoint_every: int = 0      # steps between checkpoints (0: only at epoch ends)
    heartbeat_timeout: float = 120.0
    max_restarts: int = 3
    fault: Fault | None = None
    malloc: str = "keep"           # 'return' freed memory to the OS, or 'keep' it in the heap (faster on CPU)
    tensorboard: bool = True       # event files in run_dir/tensorboard/ (when the package is installed)
    recovery: str = "one"          # 'one': restart only a failed worker where possible; 'all': every worker
    replay_log_mb: float = 256.0   # memory bound of each worker's replay log (more spills to files)
    replay_spill_dir: str | None = None   # where replay logs spill (None: the attempt's private temp folder)
    transport: str = "ipc"         # 'ipc' or 'tcp' links (launch/run/transport_choice.py resolves --transport)
    worker_kind: str | None = None  # 'process', 'thread' (threads of host processes), 'auto' or None: thread with
                                    # streams_per_gpu > 1, else process (launch/run/hosts.py resolve_kind)
    workers_per_host: int = 0      # thread workers: at most this many per host process (0: all of one device)
    streams_per_gpu: int = 0       # thread workers per GPU, each on its own CUDA stream (0: one worker per GPU)
    spares: int = 1                # warm spare worker processes a one-worker recovery takes over (--spares)
    cuda_graphs: bool = False      # GPU workers capture their train step as CUDA graphs (--cuda-graphs)
    replicas: int = 1              # R copies of the K-worker pipeline, each minibatch in R shards (replicas.py)


def number_of_workers(spec: str, num_modules: int, gpus: list[str], streams_per_gpu: int = 0) -> int:
    """--workers: 'layer' = one per local module, 'auto' = one per GPU stream (--streams-per-gpu, default 1) or
    per CPU core, K = K."""
    if spec == "layer":
        return num_modules
    if spec == "auto":
        k = len(gpus) * max(streams_per_gpu, 1) if gpus else (os.cpu_count() or 1)
    else:
        try:
            k = int(spec)
        except ValueError:
            raise UsageError(f"--workers {spec!r}: expected auto, layer or a number") from None
        if k < 1:
            raise UsageError(f"--workers must be >= 1, got {k}")
    if k > num_modules:
        if spec == "auto":
            return num_modules
        raise UsageError(f"--workers {k}: this run has only {num_modules} local modules; use at most that many "
                         "or --workers layer")
    return k


def assemble(cfg: RunConfig, data, run_dir: str):
    """Rebuild the network and load every worker's final per-layer files: the trained model and aux nets."""
    from auglocal.launch.run.checkpoints import CheckpointError
    from auglocal.workers.runtime.layer_files import LayerFileDamaged, load_layers_into

    model, aux = build_network(cfg, data)
    try:
        updates = load_layers_into(model, aux, os.path.join(run_dir, "layers"))
    except LayerFileDamaged as err:     # never a network assembled from damaged files: one line, exit 1
        raise CheckpointError(f"{err}: the trained network cannot be assembled; recompute its end with "
                              f"auglocal-launch --resume {run_dir}") from None
    return model, aux, updates


def plan_pipeline(cfg: RunConfig, data, opts: PipelineOptions, measure: bool = True,
                  network: tuple | None = None) -> tuple[PipelinePlan, Placement, list[bool]]:
    """Partition the local modules onto workers, balanced as --balance says (`measure` False: a dry run,
    which never times modules unless --balance time asks; see choose_module_costs). `network`: the
    (model, aux nets) of build_network when the caller has built them already."""
    gpus = opts.gpus or []
    model, aux = network or build_network(cfg, data)
    modules = build_local_modules(model, aux)
    k = number_of_workers(opts.workers, len(modules), gpus, opts.streams_per_gpu)
    if opts.workers == "auto" and opts.replicas > 1:      # the devices are shared by R pipelines
        k = max(1, k // opts.replicas)
    kind = resolve_kind(opts.worker_kind, gpus, opts.streams_per_gpu, k)
    # only timing needs a real training batch; FLOPs need the input's shape and dtype, which raw test pixels have
    # (augmenting and normalising import torchvision: seconds a dry run should not spend)
    timing_possible = measure or opts.balance == "time"
    x, y = data.train_batch(cfg.seed, 0, 0, cfg.batch_size) if timing_possible else data.shape_batch(cfg.batch_size)
    devices = one_host_devices(k, gpus, opts.streams_per_gpu)
    c = choose_module_costs(modules, x, y, opts.balance, CostKey.of(cfg), k, measure=measure,
                            kernels=Kernels.from_config(cfg), device=devices[0])   # timed where workers compute
    plan = make_plan(modules, k, cfg.batch_size, c.costs, unit=c.unit, source=c.source)
    shapes = layer_output_shapes(model)
    inputs = [shapes[plan.layer_ids[r][0] - 1] if plan.layer_ids[r][0] > 0 else (3, cfg.input_size, cfg.input_size)
              for r in range(k)]
    placement = Placement(groups=plan.groups, layer_ids=plan.layer_ids, devices=devices,
                          threads=[opts.threads] * k, input_shapes=inputs,
                          hosts=host_groups(devices, kind, opts.workers_per_host))
    if opts.replicas > 1:
        every = one_host_devices(k * opts.replicas, gpus, opts.streams_per_gpu)
        placement = replicate(placement, opts.replicas, every, host_groups(every, kind, opts.workers_per_host))
    return plan, placement, [m.needs_input for m in modules]


def _progress_bar(cfg: RunConfig, data, progress: bool, done: int) -> tqdm:
    steps = data.steps_per_epoch(cfg.batch_size) * cfg.epochs
    total = min(steps, cfg.max_steps) if cfg.max_steps else steps
    return tqdm(total=total, initial=done, disable=not progress, unit="batch", dynamic_ncols=True)


def _expected_updates(cfg: RunConfig, data) -> int:
    steps = data.steps_per_epoch(cfg.batch_size) * cfg.epochs
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def check_fault_target(fault: Fault | None, k: int) -> None:
    """A fault that could never fire in a run of `k` workers is bad input (see
    auglocal.workers.runtime.faults.check_target)."""
    try:
        check_target(fault, k)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _note_recovery(restarts: list[dict], coord: Coordinator, t_failed: float | None) -> None:
    """Recovery time of the last failure: from its detection to the first minibatch finished afterwards."""
    if restarts and "recovery_s" not in restarts[-1]:
        done = coord.stats.first_step_done
        restarts[-1]["recovery_s"] = (done - t_failed) if (done is not None and t_failed is not None) else None


def _note_attempt(restarts: list[dict], pids: dict[str, list], coord: Coordinator, attempt: int) -> None:
    """Add the attempt's one-worker recoveries to `restarts` and its worker pids to `pids`."""
    restarts.extend(rec.to_dict(attempt) for rec in coord.recovery.recoveries)
    for rank, ranks_pids in sorted(coord.pids.items()):
        pids.setdefault(str(rank), []).extend(ranks_pids)


@dataclass
class PreparedRun:
    """What every attempt shares: the config, data, plan, run folder and checkpoint store."""

    cfg: RunConfig
    data: object
    opts: PipelineOptions
    plan: PipelinePlan
    placement: Placement
    needs_input: list[bool]
    run: RunDir
    store: CheckpointStore
    progress: bool
    tb: TensorBoardSink                             # event files (a no-op when off or not installed)
    resume_from: tuple[int, dict] | None = None    # the verified checkpoint --resume starts from
    backend: Backend = BY_NAME[ONE_HOST]             # whose coordinator runs each attempt (launch/backends/registry.py)
    backend_options: dict = field(default_factory=dict)   # its coordinator's own keyword arguments


@dataclass
class Outcome:
    """How the attempts ended: the last coordinator's stats, every restart, and the error if they ran out."""

    stats: PipelineStats
    tracker: EpochTracker
    restarts: list[dict]
    counters: RunCounters
    error: WorkerFailed | None = None
    last_checkpoint: int | None = None
    pids: dict[str, list] = field(default_factory=dict)   # rank -> pid of every process that ran it, in order


def prepare_run(cfg: RunConfig, data, opts: PipelineOptions, out: str | None, progress: bool,
                resume: bool) -> PreparedRun:
    """Plan the partition, open the run folder and write its config and plan."""
    if not opts.gpus:
        cfg.device = "cpu"
    plan, placement, needs_input = plan_pipeline(cfg, data, opts)
    check_fault_target(opts.fault, len(placement.groups))
    run = RunDir(out or default_run_dir(cfg.model, cfg.rule))
    store = CheckpointStore(run.path, start_identity(run.path, cfg, resume))
    resume_from = store.resume_point() if resume else None      # verified before any worker starts
    tb = TensorBoardSink.open(run.path, opts.tensorboard)
    store.on_commit = tb.checkpoint
    if not resume:
        run.write_json("config.json", cfg.to_dict())
    run.write_json("plan.json", {**plan.to_dict(), "devices": placement.devices, "threads": placement.threads,
                                  "hosts": placement.hosts})
    print(plan.format())
    print(describe_hosts(placement.hosts, placement.devices))
    if placement.replicas > 1:
        print(describe_replicas(placement.replicas, cfg.batch_size, placement.stages))
    return PreparedRun(cfg, data, opts, plan, placement, needs_input, run, store, progress, tb, resume_from)


def _attempt_callbacks(p: PreparedRun, bar: tqdm, stats: PipelineStats):
    """The progress bar, metrics.jsonl and TensorBoard writers of one attempt."""
    cfg, run, tb = p.cfg, p.run, p.tb
    usage = UsageSampler(len(p.placement.groups), _expected_updates(cfg, p.data))

    def on_step(r: StepRecord) -> None:
        run.log("step", r)
        tb.step(r)
        if (sample := usage.sample(stats, r.global_step, time.perf_counter())) is not None:
            run.log("workers", sample)
            tb.workers(sample)
        busy = stats.busy_fractions(time.perf_counter())
        bar.set_description(f"epoch {r.epoch + 1}/{cfg.epochs}")
        bar.set_postfix(loss=f"{r.loss:.3f}", acc=f"{r.accuracy:.1f}%",
                        img_s=f"{stats.images_done / max(time.perf_counter() - stats.started, 1e-9):.0f}",
                        busy="/".join(f"{100 * b:.0f}" for b in busy))
        bar.update(1)

    def on_epoch(r: EpochRecord) -> None:
        run.log("epoch", r)
        tb.epoch(r)
        bar.write(epoch_line(r))

    return on_step, on_epoch


def _describe_checkpoint(latest) -> str:
    if not latest:
        return "no checkpoint yet (restart from the beginning)"
    return (f"checkpoint {latest[0]} (next minibatch: epoch {latest[1]['next_epoch'] + 1}, step "
            f"{latest[1]['next_step']})")


def run_attempts(p: PreparedRun) -> Outcome:
    """Attempts until one finishes: after a failure, stop every worker and restart from the last committed
    checkpoint, at most --max-restarts times. The fault (if any) fires in the first attempt only, unless
    it says `always`."""
    cfg, data, opts, run, store = p.cfg, p.data, p.opts, p.run, p.store
    latest = p.resume_from
    restarts: list[dict] = []
    pids: dict[str, list] = {}
    counters = RunCounters()
    t_failed: float | None = None
    attempt = 0
    make_coordinator = p.backend.coordinator_factory()
    while True:
        state = TrackerState.from_dict(latest[1]["tracker"]) if latest else TrackerState()
        run.truncate_metrics(state.metrics_lines)
        start = (Position(latest[1]["next_epoch"], latest[1]["next_step"], latest[1]["global_step"])
                 if latest else Position())
        bar = _progress_bar(cfg, data, p.progress, state.steps_done)
        p.tb.begin_attempt(state.steps_done)
        stats = PipelineStats()
        on_step, on_epoch = _attempt_callbacks(p, bar, stats)
        tracker = EpochTracker(cfg, data.steps_per_epoch(cfg.batch_size), data.num_test_batches(cfg.batch_size),
                               len(p.placement.groups), on_step, on_epoch, lambda: run.lines, state, stats,
                               replicas=p.placement.replicas)
        attempt_opts = AttemptOptions(
            window=opts.window, trace_dir=str(run.path) if opts.trace else None,
            checkpoint_every=opts.checkpoint_every, heartbeat_timeout=opts.heartbeat_timeout,
            fault=opts.fault if (attempt == 0 or (opts.fault and opts.fault.always)) else None,
            resume_dir=str(store.dir_for(latest[0])) if latest else None, malloc=opts.malloc,
            recovery=opts.recovery if p.placement.replicas == 1 else "all",   # replicas: whole restarts only
            replay_log_mb=opts.replay_log_mb, spill_dir=opts.replay_spill_dir,
            transport=opts.transport, spares=opts.spares, cuda_graphs=opts.cuda_graphs)
        coord = make_coordinator(cfg, data, p.placement, str(run.path), needs_input=p.needs_input, opts=attempt_opts,
                                 store=store, tracker=tracker, start=start,
                                 next_checkpoint_id=(latest[0] + 1) if latest else 1, counters=counters,
                                 **p.backend_options)
        try:
            with coord:
                coord.start()
                coord.run()
            _note_recovery(restarts, coord, t_failed)
            _note_attempt(restarts, pids, coord, attempt)
            return Outcome(coord.stats, tracker, restarts, counters, pids=pids)
        except WorkerFailed as err:
            _note_recovery(restarts, coord, t_failed)
            _note_attempt(restarts, pids, coord, attempt)
            t_failed = err.detected_at
            latest = store.verified_latest()
            fallback = f" (one-worker recovery fell back: {err.fallback})" if err.fallback else ""
            restarts.append({"attempt": attempt, "worker": err.rank, "layers": err.layers, "error": str(err),
                             "restart_from": latest[0] if latest else None, "path": "all",
                             "fallback": err.fallback})
            if err.divergence is None:      # a divergence is said once, by report_failure
                bar.write(f"auglocal-launch: {err}; all workers stopped{fallback}; last committed: "
                          f"{_describe_checkpoint(latest)}")
            p.tb.restart(f"{err}; last committed: {_describe_checkpoint(latest)}")
            attempt += 1
            if attempt > opts.max_restarts or not err.restartable:
                return Outcome(coord.stats, tracker, restarts, counters, err, latest[0] if latest else None, pids)
        finally:
            bar.close()


def report_failure(p: PreparedRun, outcome: Outcome) -> int:
    """Say why the run stopped and how to resume it; write failure.json. Returns exit code 1."""
    if outcome.error.divergence is not None:
        from auglocal.launch.run.divergence import report

        return report(p, outcome, _describe_checkpoint)
    err, latest = outcome.error, p.store.verified_latest(report=lambda line: None)
    why = (f"giving up after {p.opts.max_restarts} restart(s)" if err.restartable
           else "stopping: a restart would fail the same way")
    print(f"auglocal-launch: {why}. Failed: {err}. Last committed {_describe_checkpoint(latest)}. "
          f"Resume with: auglocal-launch --resume {p.run.path}", file=sys.stderr)
    p.run.write_json("failure.json", {"restarts": outcome.restarts, "last_checkpoint": outcome.last_checkpoint,
                                      "rejected_messages": outcome.counters.rejected, "worker_pids": outcome.pids})
    p.run.close()
    p.tb.close()
    return 1


def report_success(p: PreparedRun, outcome: Outcome) -> int:
    """Assemble the trained network from the layer files, write summary and pictures, check the counters."""
    cfg, data, run, opts = p.cfg, p.data, p.run, p.opts
    stats = outcome.stats
    elapsed = time.perf_counter() - stats.started
    busy = stats.busy_fractions(time.perf_counter())
    expected = _expected_updates(cfg, data)
    model, aux, updates = assemble(cfg, data, str(run.path))
    save_networks(run, model, aux)
    run.write_json("summary.json", {
        "images_per_s": stats.images_done / max(elapsed, 1e-9), "busy_fractions": busy,
        "cpu_s_per_step": stats.cpu_s_per_step(),
        "steady_images_per_s": stats.steady_images_per_s(cfg.batch_size), "updates": updates,
        "expected_updates": expected, "max_in_flight": stats.max_in_flight, "window": opts.window,
        "gpu_peak_bytes": stats.gpu_peak_bytes, "rejected_messages": outcome.counters.rejected,
        "restarts": outcome.restarts, "worker_pids": outcome.pids, "replay_log": stats.replay_log,
        "nonfinite": cfg.nonfinite, "skipped": outcome.tracker.skipped_totals(), **replicas_summary(p),
        "plan": p.plan.to_dict()})
    history = outcome.tracker.history
    run.close()
    if history:
        p.tb.pictures(plot_run(run.read_metrics(), run.path, f"{cfg.model} {cfg.rule} d={cfg.d} on "
                               f"{cfg.dataset}, {len(p.placement.groups)} workers"))
    p.tb.close()
    if opts.trace:
        from auglocal.launch.report.gantt import draw_gantt, text_gantt

        draw_gantt(run.path, run.path / "gantt.png")
        print(text_gantt(run.path))
    bad = {layer: n for layer, n in updates.items() if n != expected}
    if bad:
        print(f"auglocal-launch: update counters disagree: expected {expected} per layer, got {bad}", file=sys.stderr)
        return 1
    if stats.steps_done == 0:
        print(f"nothing left to train: run folder {run.path} is complete")
    elif history:
        last = history[-1]
        print(f"done: best test accuracy {last.best_accuracy:.2f}%, last {last.test_accuracy:.2f}%, "
              f"{stats.images_done / max(elapsed, 1e-9):.1f} images/s, "
              f"busy {' '.join(f'{100 * b:.0f}%' for b in busy)}; run folder {run.path}")
    return 0


@contextlib.contextmanager
def coordinator_threads(devices: Sequence[str]) -> Iterator[None]:
    """One intra-op thread for this (the coordinator's) process while CPU workers hold the cores.

    The coordinator's tensor work is small (augmenting and normalising one batch per step), but with more than
    one OpenMP thread every such operation waits at a barrier for a thread that a busy worker has pushed off its
    core, and the waiting threads spin on cores the workers need. Measured with ResNet-32, batch 32, 3 workers
    on 2 cores: 61-73 ms of coordinator CPU per step on torch's default 2 threads, 15 ms on one. GPU workers
    leave the cores free, so their runs keep the default. The caller's setting is restored afterwards."""
    if not any(device == "cpu" for device in devices):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_pipeline(cfg: RunConfig, data, opts: PipelineOptions, out: str | None = None,
                   progress: bool = True, resume: bool = False) -> int:
    """Train with worker processes, restarting from the last committed checkpoint after a failure.

    Returns the exit code: 0 done, 1 failed after --max-restarts restarts (or update counters disagree)."""
    BY_NAME[ONE_HOST].start_warming_up()
    prepared = prepare_run(cfg, data, opts, out, progress, resume)
    with coordinator_threads(prepared.placement.devices):
        outcome = run_attempts(prepared)
    if outcome.error is not None:
        return report_failure(prepared, outcome)
    return report_success(prepared, outcome)

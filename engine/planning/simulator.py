"""Pipeline simulator: replays a run's events through K workers with module times, link costs and credits.

The plan's prediction (batch / slowest worker) ignores what a real run also does: the fill, test batches and
checkpoint markers that pass through every worker, the time a message spends on its link, and the credit
window that blocks a worker whose downstream still holds `window` unconsumed messages. The simulator replays
the run's event sequence (see `run_events`, to be replaced by the coordinator's feed plan) and gives each
event's start and end on every worker, from which it reports steady images/s and busy fractions.

Model (what a worker does, workers/runtime/worker.py): it takes the next message from its inbox (that *consumes* it
and returns a credit to its sender), runs the primary forwards of its modules (and the aux work of all but
the last module), emits the output, sends it (blocking while its downstream holds `window` unconsumed
messages; the send itself costs the link's latency + bytes / bandwidth), then runs the last module's aux
work and the optimizer step. Eval batches run the primary forwards only; checkpoint markers cost a save.
Every message passes every worker in the same order, so the event times follow from one recurrence over
(event j, worker r): start[r][j] = max(arrival[r][j], done[r][j-1]); the send of j from r waits for
start[r+1][j - window]. These are exactly the times a discrete-event simulation of that model produces.
Workers are separate processes (or threads of host processes). With more busy processes (the workers, and
the coordinator when `feed_s` is given) than `cores`, the run is replayed instead by engine/planning/
shared_cores.py, which time-slices the cores fairly among the processes computing at each moment (what Linux
does); with a core each that replay gives exactly this recurrence's times. Workers that share one GPU (stream
workers, `shared`) are bounded per GPU: images/s <= batch / (sum of their busy time per step), i.e. the model
counts no overlap between streams (an upper bound on the time; kernels of different streams may overlap on a
GPU that one of them does not fill).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from auglocal.engine.feed import CheckpointMarker, EvalBatch, FeedShape, TrainStep, feed_plan
from auglocal.engine.planning.plan import format_rate
from auglocal.engine.planning.shared_cores import replay_shared
from auglocal.engine.planning.timing import time_module_phases
from auglocal.engine.precision import Kernels
from torch import nn

TRAIN, EVAL, CHECKPOINT = "train", "eval", "checkpoint"


@dataclass(frozen=True)
class Event:
    """One message the coordinator feeds: a training step, a test batch or a checkpoint marker."""

    kind: str
    epoch: int = 0
    step: int = 0


def run_events(steps_per_epoch: int, epochs: int, test_batches: int, checkpoint_every: int = 0,
               max_steps: int | None = None) -> list[Event]:
    """The coordinator's feeding order, read from the feed plan (engine/feed.py): what reaches worker 0."""
    shape = FeedShape(epochs, steps_per_epoch, test_batches, max_steps, checkpoint_every)
    events: list[Event] = []
    for e in feed_plan(shape):
        if isinstance(e, TrainStep):
            events.append(Event(TRAIN, e.epoch, e.step))
        elif isinstance(e, EvalBatch):
            events.append(Event(EVAL, e.epoch, e.index))
        elif isinstance(e, CheckpointMarker):
            events.append(Event(CHECKPOINT, e.resume_at.epoch, e.resume_at.step))
    return events


@dataclass(frozen=True)
class ModuleTime:
    """Seconds per batch of one local module: primary forward, and the rest (aux forward, both backwards)."""

    forward_s: float
    rest_s: float

    @property
    def total_s(self) -> float:
        return self.forward_s + self.rest_s


@dataclass(frozen=True)
class LinkCost:
    """Cost of one message on a link: latency + bytes / bandwidth (measured by benchmarks/transport.py)."""

    latency_s: float = 0.0
    bytes_per_s: float = float("inf")

    def __call__(self, nbytes: int) -> float:
        return self.latency_s + nbytes / self.bytes_per_s


@dataclass(frozen=True)
class WorkerLoad:
    """Per-event times of one worker, derived from its modules (see `worker_loads`)."""

    emit_s: float          # train: from taking the message to its output being ready to send
    tail_s: float          # train: after the send (last module's aux work + optimizer step)
    eval_s: float          # eval: primary forwards only
    checkpoint_s: float = 0.0
    out_bytes: int = 0     # activation bytes sent downstream per train/eval message


def worker_loads(groups: Sequence[Sequence[int]], modules: Sequence[ModuleTime], out_bytes: Sequence[int],
                 checkpoint_s: float = 0.0) -> list[WorkerLoad]:
    """Group module times into worker loads: a worker emits after its last module's primary forward."""
    loads = []
    for k, g in enumerate(groups):
        times = [modules[i] for i in g]
        last = k == len(groups) - 1
        emit = sum(m.total_s for m in times[:-1]) + times[-1].forward_s
        loads.append(WorkerLoad(emit_s=emit, tail_s=times[-1].rest_s, eval_s=sum(m.forward_s for m in times),
                                checkpoint_s=checkpoint_s, out_bytes=0 if last else int(out_bytes[g[-1]])))
    return loads


@dataclass
class Simulation:
    """What a replay predicts; times in seconds from the first feed."""

    images_per_s: float                  # steady state: train completions at the last worker after the fill
    pipeline_images_per_s: float         # the same without the shared-cores bound
    busy_fractions: list[float]          # compute time of each worker over the whole run
    makespan_s: float
    train_done_s: list[float] = field(default_factory=list)   # the last worker's train completions
    start_s: list[list[float]] = field(default_factory=list)  # start_s[r][j]: worker r takes event j


def simulate(events: Sequence[Event], loads: Sequence[WorkerLoad], batch_size: int, link: LinkCost,
             window: int = 2, cores: int | None = None, feed_s: float = 0.0, input_bytes: int = 0,
             skip: int = 2, shared: Sequence[Sequence[int]] = ()) -> Simulation:
    """Replay `events` through workers with `loads`; see the module docstring for the model.

    `feed_s` is the coordinator's time to produce one message, `input_bytes` the size of a fed batch, `skip`
    the train steps left out of the steady rate (the fill), `cores` the CPU cores the workers share (None:
    one each, as with one GPU per worker), `shared` the groups of workers that share one GPU.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not loads:
        raise ValueError("no workers to simulate; give one WorkerLoad per worker")
    k, n = len(loads), len(events)
    start = [[0.0] * n for _ in range(k)]
    arrival = [[0.0] * n for _ in range(k)]
    done = [0.0] * k               # when each worker finished its previous event
    busy = [0.0] * k
    fed_at = 0.0
    train_done: list[float] = []
    for j, event in enumerate(events):
        # the coordinator: produce, wait for a credit from worker 0, send
        fed_at += feed_s
        if j >= window:
            fed_at = max(fed_at, start[0][j - window])
        fed_at += link(input_bytes) if event.kind != CHECKPOINT else link(0)
        arrival[0][j] = fed_at
        for r, load in enumerate(loads):
            t = start[r][j] = max(arrival[r][j], done[r])
            last = r == k - 1
            work_before, work_after, nbytes = event_cost(load, event)
            t += work_before
            if not last:
                if j >= window:   # credit: the downstream must have taken event j - window
                    t = max(t, start[r + 1][j - window])
                t += link(nbytes)
                arrival[r + 1][j] = t
            t += work_after
            busy[r] += work_before + work_after
            done[r] = t
            if last and event.kind == TRAIN:
                train_done.append(t)
    makespan = max(done)
    pipeline_rate = _steady_rate(train_done, skip, batch_size, makespan)
    rate, fractions, starts = pipeline_rate, [b / makespan for b in busy], start
    if cores is not None and cores < k + (feed_s > 0):
        # more busy processes than cores: replay with time-slicing (engine/planning/shared_cores.py)
        costs = [[(feed_s, 0.0, 0 if e.kind == CHECKPOINT else input_bytes) for e in events]]
        costs += [[event_cost(load, e) for e in events] for load in loads]
        starts, finished, shared_busy = replay_shared(costs, link, window, cores)
        starts = starts[1:]
        train_done = [finished[k][j] for j, e in enumerate(events) if e.kind == TRAIN]
        makespan = max(row[-1] for row in finished[1:])
        rate = _steady_rate(train_done, skip, batch_size, makespan)
        # a short run's drain (upstream done, the last workers alone on the cores) must not read as faster
        # than the cores can ever be: every step's work, the coordinator's included, on `cores` at full speed
        work = sum(load.emit_s + load.tail_s for load in loads) + feed_s
        rate = min(rate, cores * batch_size / work) if work > 0 else rate
        fractions = [b / makespan for b in shared_busy[1:]]
    for group in shared:
        per_step = sum(loads[r].emit_s + loads[r].tail_s for r in group)
        rate = min(rate, batch_size / per_step) if per_step > 0 else rate
    return Simulation(images_per_s=rate, pipeline_images_per_s=pipeline_rate, busy_fractions=fractions,
                      makespan_s=makespan, train_done_s=train_done, start_s=starts)


def event_cost(load: WorkerLoad, event: Event) -> tuple[float, float, int]:
    """(work before the send, work after it, bytes sent) of one worker for one event."""
    if event.kind == TRAIN:
        return load.emit_s, load.tail_s, load.out_bytes
    if event.kind == EVAL:
        return load.eval_s, 0.0, load.out_bytes
    return load.checkpoint_s, 0.0, 0


def _steady_rate(train_done: Sequence[float], skip: int, batch_size: int, makespan: float) -> float:
    """Images/s between the last worker's train completions after the fill (`skip` steps)."""
    steady = train_done[skip:] if len(train_done) > skip + 1 else train_done
    if len(steady) >= 2:
        return (len(steady) - 1) * batch_size / (steady[-1] - steady[0])
    return batch_size * len(train_done) / makespan


def module_phase_times(modules: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int = 2,
                       warmup: int = 1, kernels: Kernels | None = None) -> tuple[list[ModuleTime], list[int]]:
    """Measured (primary forward, rest) seconds per batch of each local module at one thread (medians of
    auglocal.engine.planning.timing.time_module_phases, which runs them as a Stage does), and the bytes of each
    module's output (what a worker ending with it sends downstream). The split is where a worker emits."""
    s = time_module_phases(modules, x, y, steps, warmup, kernels)
    return ([ModuleTime(statistics.median(f), statistics.median(r)) for f, r in zip(s.forward, s.rest, strict=True)],
            s.out_bytes)


def module_times_from_flops(flops_costs: Sequence[float], primary_macs: Sequence[float], macs_per_s: float,
                            batch_size: int) -> list[ModuleTime]:
    """Module times from work counts instead of measurement: forward = primary MACs, the rest = the remaining
    3 x (primary + aux) MACs of `module_costs_flops`, each image's MACs at `macs_per_s`. A label, not a
    measurement: it assumes every layer runs at the same rate."""
    return [ModuleTime(forward_s=p * batch_size / macs_per_s, rest_s=max(c - p, 0.0) * batch_size / macs_per_s)
            for c, p in zip(flops_costs, primary_macs, strict=True)]


#: Link model of a CPU run when nothing was measured: ipc:// on this project's 2-core machine
#: (benchmarks/results/transport.md: ~0.3 ms per message, ~3 GB/s for 8 MB activations).
DEFAULT_CPU_LINK = LinkCost(latency_s=300e-6, bytes_per_s=3e9)


def forward_shares(modules: Sequence[nn.Module], x: torch.Tensor) -> tuple[list[float], list[int]]:
    """Per module: the share of its training work that is the primary forward, from MACs counted on the meta
    device (forward / 3 x (primary + aux)), and its output bytes per image. Costs no arithmetic, and the
    blocks the plan's FLOPs costs counted already are not counted again."""
    from auglocal.engine.planning.costs import module_macs

    counted = module_macs(modules, x)
    return [m.forward_share for m in counted], [m.out_bytes_per_image for m in counted]


def simulate_plan(plan, shares: Sequence[float], out_bytes_per_image: Sequence[int], events: Sequence[Event],
                  link: LinkCost = DEFAULT_CPU_LINK, cores: int | None = None, window: int = 2,
                  shared: Sequence[Sequence[int]] = ()) -> Simulation:
    """Replay `events` through a PipelinePlan: each module's cost split at its forward share. Costs in MACs
    (a FLOPs plan) are replayed as seconds at one MAC per second with free links: only ratios then mean
    anything."""
    seconds = plan.unit == "s"
    scale = 1.0 if seconds else float(plan.batch_size)   # FLOPs costs are per image
    times = [ModuleTime(c * scale * s, c * scale * (1 - s)) for c, s in zip(plan.module_costs, shares, strict=True)]
    loads = worker_loads(plan.groups, times, [b * plan.batch_size for b in out_bytes_per_image])
    return simulate(events, loads, plan.batch_size, link if seconds else LinkCost(), window=window, cores=cores,
                    shared=shared)


def dry_run_line(cfg, data, plan, cpu_workers: bool, shared: Sequence[Sequence[int]] = (),
                 network: tuple | None = None) -> str:
    """The simulator's figure for `--dry-run`, beside the plan's own prediction (one epoch's feed order).
    `network`: the (model, aux nets) the caller built already."""
    import os

    from auglocal.engine.config import build_network
    from auglocal.engine.local_module import build_local_modules

    model, aux = network or build_network(cfg, data)
    modules = build_local_modules(model, aux)
    x, _ = data.shape_batch(2)   # only its shape counts (MACs on the meta device)
    shares, out_bytes = forward_shares(modules, x)
    events = run_events(data.steps_per_epoch(cfg.batch_size), 1, data.num_test_batches(cfg.batch_size),
                        max_steps=cfg.max_steps)
    sim = simulate_plan(plan, shares, out_bytes, events, cores=os.cpu_count() if cpu_workers else None,
                        shared=shared)
    busy = " ".join(f"{100 * b:.0f}%" for b in sim.busy_fractions)
    if sim.images_per_s < sim.pipeline_images_per_s:
        busy += (f"; slowed by time-slicing {os.cpu_count()} shared CPU cores" if cpu_workers else
                 "; bounded by GPUs shared by " + ", ".join(f"workers {g[0]}..{g[-1]}" for g in shared) +
                 " (their work adds up: no stream overlap assumed)")
    if plan.unit == "s":
        return (f"simulated (feed order, links, credit window 2): {format_rate(sim.images_per_s)} images/s "
                f"(plan predicts {format_rate(plan.predicted_images_per_s)}); busy {busy}")
    one = sum(plan.module_costs) * plan.batch_size
    return (f"simulated speedup over one worker (FLOPs costs, free links): "
            f"{sim.images_per_s * one / plan.batch_size:.2f}x (plan predicts {plan.speedup:.2f}x); busy {busy}")

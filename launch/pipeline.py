"""The pipelined run behind `auglocal-launch`: placement, partition, progress, run folder."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from engine.config import RunConfig, UsageError, build_network
from engine.planning import PipelinePlan, make_plan, module_costs_flops, module_costs_timed
from engine.rules import build_local_modules
from engine.trainer import EpochRecord, StepRecord
from launch.coordinator import Coordinator, Placement, WorkerFailed, assemble, default_devices
from launch.plots import plot_curves
from launch.run_dir import RunDir, default_run_dir
from launch.sequential import save_networks


@dataclass
class PipelineOptions:
    """How the run is spread over processes: --workers, --gpus, --balance, --threads, --trace."""

    workers: str = "auto"          # 'auto' | 'layer' | an integer K as a string
    gpus: list[str] | None = None  # e.g. ['cuda:0', 'cuda:1']; None or [] = CPU
    balance: str = "time"          # 'time' (measured) or 'flops'
    threads: int = 1               # intra-op threads per CPU worker
    trace: bool = False
    window: int = 2
    delays: dict[int, float] | None = None   # rank -> extra seconds per step (a deliberately slow worker)


def parse_gpus(spec: str | None) -> list[str]:
    """'0-3,6' -> ['cuda:0', ..., 'cuda:3', 'cuda:6']; 'cpu' or None -> [] (CPU workers)."""
    if spec is None or spec.strip().lower() == "cpu":
        return []
    ids: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                ids.extend(range(lo, hi + 1))
            else:
                ids.append(int(part))
        except ValueError:
            raise UsageError(f"--gpus {spec!r}: expected 'cpu' or GPU ids like 0-3,6") from None
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [i for i in ids if i >= available]
    if missing:
        raise UsageError(f"--gpus {spec!r}: GPU(s) {missing} not available ({available} CUDA device(s) visible); "
                         "use --gpus cpu to run on CPU cores")
    return [f"cuda:{i}" for i in ids]


def number_of_workers(spec: str, num_modules: int, gpus: list[str]) -> int:
    """--workers: 'layer' = one per local module, 'auto' = one per GPU (or per CPU core), K = K."""
    if spec == "layer":
        return num_modules
    if spec == "auto":
        k = len(gpus) if gpus else (os.cpu_count() or 1)
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


def plan_pipeline(cfg: RunConfig, data, opts: PipelineOptions) -> tuple[PipelinePlan, Placement, list[bool]]:
    """Partition the local modules onto workers, balanced by measured time (or FLOPs)."""
    gpus = opts.gpus or []
    model, aux = build_network(cfg, data)
    modules = build_local_modules(model, aux)
    k = number_of_workers(opts.workers, len(modules), gpus)
    x, y = data.train_batch(cfg.seed, 0, 0, cfg.batch_size)
    if opts.balance == "flops" or k == len(modules) or k == 1:
        costs = module_costs_flops(modules, x[:2], y[:2])
        plan = make_plan(modules, k, cfg.batch_size, costs, unit="MAC")
    else:
        costs = module_costs_timed(modules, x, y, steps=2)
        plan = make_plan(modules, k, cfg.batch_size, costs)
    placement = Placement(groups=plan.groups, layer_ids=plan.layer_ids, devices=default_devices(k, gpus),
                          threads=[opts.threads] * k)
    return plan, placement, [m.needs_input for m in modules]


def train_pipeline(cfg: RunConfig, data, opts: PipelineOptions, out: str | None = None,
                   progress: bool = True) -> int:
    """Train with worker processes; returns the exit code (1 when a worker failed)."""
    if not opts.gpus:
        cfg.device = "cpu"
    plan, placement, needs_input = plan_pipeline(cfg, data, opts)
    run = RunDir(out or default_run_dir(cfg.model, cfg.rule))
    run.write_json("config.json", {**cfg.to_dict(), "trainer": "pipeline", "workers": len(placement.groups),
                                   "devices": placement.devices, "threads": placement.threads})
    run.write_json("plan.json", plan.to_dict())
    print(plan.format())
    trace_dir = str(run.path) if opts.trace else None
    steps = data.steps_per_epoch(cfg.batch_size) * cfg.epochs
    total = min(steps, cfg.max_steps) if cfg.max_steps else steps
    bar = tqdm(total=total, disable=not progress, unit="batch", dynamic_ncols=True)
    t0 = time.perf_counter()
    with Coordinator(cfg, data, placement, str(run.path), needs_input=needs_input, trace_dir=trace_dir,
                     window=opts.window, delays=opts.delays) as coord:

        def on_step(r: StepRecord) -> None:
            run.log("step", r)
            busy = coord.stats.busy_fractions(time.perf_counter())
            bar.set_description(f"epoch {r.epoch + 1}/{cfg.epochs}")
            bar.set_postfix(loss=f"{r.loss:.3f}", acc=f"{r.accuracy:.1f}%",
                            img_s=f"{coord.stats.images_done / (time.perf_counter() - coord.stats.started):.0f}",
                            busy="/".join(f"{100 * b:.0f}" for b in busy))
            bar.update(1)

        def on_epoch(r: EpochRecord) -> None:
            run.log("epoch", r)
            bar.write(f"epoch {r.epoch + 1}: train loss {r.train_loss:.4f}, train acc {r.train_accuracy:.2f}%, "
                      f"test acc {r.test_accuracy:.2f}% (best {r.best_accuracy:.2f}%), {r.seconds:.1f} s")

        try:
            coord.start()
            history = coord.run(on_step, on_epoch)
        except WorkerFailed as err:
            bar.close()
            print(f"auglocal-launch: {err}; all workers stopped. Run folder: {run.path}")
            run.close()
            return 1
        finally:
            bar.close()
        elapsed = time.perf_counter() - coord.stats.started
        busy = coord.stats.busy_fractions(time.perf_counter())
        images = coord.stats.images_done
        updates = coord.stats.updates
        in_flight = coord.stats.max_in_flight
        steady = coord.stats.steady_images_per_s(cfg.batch_size)
        gpu_peak = coord.stats.gpu_peak_bytes
    model, aux, _ = assemble(cfg, data, str(run.path))
    save_networks(run, model, aux)
    run.write_json("summary.json", {"images_per_s": images / max(elapsed, 1e-9), "busy_fractions": busy,
                                    "wall_s": time.perf_counter() - t0, "updates": updates,
                                    "max_in_flight": in_flight, "window": opts.window,
                                    "steady_images_per_s": steady, "plan": plan.to_dict(),
                                    "gpu_peak_bytes": gpu_peak})
    run.close()
    if history:
        plot_curves(run.read_metrics(), run.path / "curves.png", f"{cfg.model} {cfg.rule} d={cfg.d} on "
                    f"{cfg.dataset}, {len(placement.groups)} workers")
    if opts.trace:
        from launch.gantt import draw_gantt, text_gantt

        draw_gantt(run.path, run.path / "gantt.png")
        print(text_gantt(run.path))
    if history:
        last = history[-1]
        print(f"done: best test accuracy {last.best_accuracy:.2f}%, last {last.test_accuracy:.2f}%, "
              f"{images / max(elapsed, 1e-9):.1f} images/s, busy {' '.join(f'{100 * b:.0f}%' for b in busy)}; "
              f"run folder {run.path}")
    return 0

"""The ledger of the (d+1)/(L+1) promise: ideal ratio, module-time model, measured pipeline, simulator.

Four sections, written to benchmarks/results/speedup.md (the plot next to it, speedup_gpus.png):

1. Ledger, ResNet-32/56/110 x d = 2..6: the ideal time ratio (d+1)/(L+1) of one local module to BP; the
   module-time model's ratio: the slowest local module's training time over BP's step time, both measured at
   one thread with auglocal.engine.planning.module_costs_timed (BP is one module: the whole network), batch `--batch`.
2. The measured pipeline at K = 1, 2 as a fraction of its plan's predicted images/s (ResNet-32, d = 2..6).
3. The simulator (engine/planning/simulator.py) against measured CPU runs: K = 2, 3 and `--workers layer` on
   ResNet-20 and ResNet-32 (d = 4): measured steady images/s vs simulated from module times measured at one
   thread, the run's own partition, the link cost measured here (ipc latency and 8 MB bandwidth), the
   coordinator's CPU per batch measured here, and the machine's cores shared by time-slicing.
4. The simulator's prediction for `--gpus 0-9` on ResNet-110 d = 4, batch 128, K = 1..10, from FLOPs
   (not measured on a GPU): module times = MACs / an assumed effective rate; links = a GPU->host->GPU copy
   over ipc. Speedup over BP on one GPU.

    python -m benchmarks.speedup --out benchmarks/results/speedup.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from auglocal.engine.config import RunConfig, build_network, resolve
from auglocal.engine.data import build_dataset
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.planning import PipelinePlan, make_plan, module_costs_flops, module_costs_timed
from auglocal.engine.planning.simulator import (
    LinkCost,
    ModuleTime,
    WorkerLoad,
    forward_shares,
    module_phase_times,
    module_times_from_flops,
    run_events,
    simulate,
    worker_loads,
)

from benchmarks.memory import machine
from benchmarks.report import emit

GPU_MACS_PER_S = 4e12     # assumed effective MAC/s of one GPU on CIFAR ResNet layers (label, not measured)
GPU_LINK = LinkCost(latency_s=150e-6, bytes_per_s=3e9)   # device->pinned host, ipc, host->device


def setup(model: str, rule: str, d: int, batch: int, steps: int = 4) -> tuple[RunConfig, object]:
    data = build_dataset("synthetic", seed=0, input_size=32, num_classes=10, train_size=batch * (steps + 2),
                         test_size=batch)
    cfg = RunConfig(model=model, rule=rule, d=d, dataset="synthetic", epochs=1, batch_size=batch, lr=0.05,
                    warmup=0, seed=0, input_size=32, num_classes=10)
    return resolve(cfg, data), data


def modules_of(model: str, rule: str, d: int, batch: int):
    cfg, data = setup(model, rule, d, batch)
    net, aux = build_network(cfg, data)
    x, y = data.train_batch(0, 0, 0, batch)
    return build_local_modules(net, aux), x, y, net.num_layers


def ledger(models: list[str], depths: list[int], batch: int, steps: int) -> list[str]:
    lines = ["## 1. Ledger: ideal (d+1)/(L+1) vs the module-time model", "",
             f"Batch {batch}, one thread, median of {steps} timed steps after one warm-up "
             "(auglocal.engine.planning.module_costs_timed). Model ratio = slowest local module's "
             "forward+loss+backward "
             "time / BP's (the whole network as one module).", "",
             "| model | L | d | ideal (d+1)/(L+1) | model ratio (slowest module / BP) | model / ideal |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in models:
        bp_modules, x, y, num_layers = modules_of(name, "bp", 2, batch)
        bp = module_costs_timed(bp_modules, x, y, steps=steps)[0]
        for d in depths:
            modules, x, y, _ = modules_of(name, "auglocal", d, batch)
            slowest = max(module_costs_timed(modules, x, y, steps=steps))
            ideal = (d + 1) / (num_layers + 1)
            row = f"| {name} | {num_layers} | {d} | {ideal:.3f} | {slowest / bp:.3f} | {slowest / bp / ideal:.2f} |"
            lines.append(row)
            print(row, flush=True)
    return lines


def pipeline_summary(model: str, d: int, batch: int, steps: int, workers: str) -> dict:
    from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline

    cfg, data = setup(model, "auglocal", d, batch, steps)
    cfg.max_steps = steps + 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        opts = PipelineOptions(workers=workers, balance="time", threads=1)
        if train_pipeline(cfg, data, opts, out=str(out), progress=False) != 0:
            raise RuntimeError(f"pipeline {model} d={d} --workers {workers} failed")
        return json.loads((out / "summary.json").read_text())


def measured_vs_plan(depths: list[int], batch: int, steps: int) -> list[str]:
    lines = ["## 2. Measured pipeline vs its plan (ResNet-32 only, for time)", "",
             f"Batch {batch}, {steps} steady steps; plan = batch / slowest worker's measured module time "
             "(+ transport), measured = steady images/s of the real run.", "",
             "| model | d | K | measured images/s | plan images/s | measured / plan |",
             "|---|---:|---:|---:|---:|---:|"]
    for d in depths:
        for k in (1, 2):
            s = pipeline_summary("resnet32", d, batch, steps, str(k))
            plan = PipelinePlan.from_dict(s["plan"])
            m, p = s["steady_images_per_s"], plan.predicted_images_per_s
            row = f"| resnet32 | {d} | {k} | {m:.1f} | {p:.1f} | {m / p:.3f} |"
            lines.append(row)
            print(row, flush=True)
    return lines


def measured_link(round_trips: int) -> LinkCost:
    """ipc latency (16 KB one-way median) and 8 MB bandwidth of this machine, from benchmarks.transport."""
    from benchmarks.transport import measure_link

    r = measure_link("ipc", 2, round_trips, 20)
    return LinkCost(latency_s=r["lat_median_us"] * 1e-6, bytes_per_s=r["gb_per_s"] * 1e9)


def feed_seconds(model: str, d: int, batch: int, steps: int = 5) -> float:
    """The coordinator's CPU seconds to produce one training batch (augment, normalise) on its one thread."""
    from auglocal.launch.run.pipeline import coordinator_threads

    cfg, data = setup(model, "auglocal", d, batch, steps)
    times = []
    with coordinator_threads(["cpu"]):   # the thread count the coordinator runs with beside CPU workers
        for step in range(steps + 1):
            start = time.perf_counter()
            data.train_batch(cfg.seed, 0, step, batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def validation(models: list[str], worker_specs: list[str], d: int, batch: int, steps: int,
               link: LinkCost) -> list[str]:
    cores = os.cpu_count() or 1
    feed_s = feed_seconds(models[0], d, batch)
    lines = ["## 3. Simulator vs measured CPU runs", "",
             f"AugLocal d = {d}, batch {batch}, {steps} steady steps (+2 fill), one test batch, the epoch-end "
             f"marker. Simulated from module (forward, rest) times measured at one thread in this process right "
             f"before and right after each run (their mean: module times on this kind of VM drift by tens of "
             f"percent within minutes; the drift column is after / before), the run's own partition, link "
             f"{link.latency_s * 1e6:.0f} us + bytes / {link.bytes_per_s / 1e9:.2f} GB/s (measured here), {cores} "
             f"cores shared by the workers and the coordinator (time-sliced: engine/planning/shared_cores.py), the "
             f"coordinator's batch {feed_s * 1e3:.1f} ms of CPU (measured here). The second simulation takes "
             f"each worker's work from the run itself: its mean CPU seconds per step (summary.json "
             f"cpu_s_per_step; split into emit and tail as its module times split), so that neither the VM's drift "
             f"nor what time-slicing costs the caches is guessed: it tests the pipeline model alone.", "",
             "| model | workers | K | measured images/s | simulated (module times) | / measured | "
             "simulated (run's CPU s) | / measured | module-time drift | measured busy | simulated busy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for name in models:
        modules, x, y, _ = modules_of(name, "auglocal", d, batch)
        for spec in worker_specs:
            before, out_bytes = module_phase_times(modules, x, y, steps=3)
            s = pipeline_summary(name, d, batch, steps, spec)
            after, _ = module_phase_times(modules, x, y, steps=3)
            times = [ModuleTime((a.forward_s + b.forward_s) / 2, (a.rest_s + b.rest_s) / 2)
                     for a, b in zip(after, before, strict=True)]
            drift = sum(a.total_s for a in after) / sum(b.total_s for b in before)
            groups = PipelinePlan.from_dict(s["plan"]).groups
            events = run_events(steps + 2, 1, 1)
            loads = worker_loads(groups, times, out_bytes)
            sims = [simulate(events, w, batch, link, cores=cores, feed_s=feed_s,
                             input_bytes=x.numel() * x.element_size())
                    for w in (loads, scaled_loads(loads, s["cpu_s_per_step"]))]
            m = s["steady_images_per_s"]
            mb = " ".join(f"{100 * b:.0f}" for b in s["busy_fractions"])
            sb = " ".join(f"{100 * b:.0f}" for b in sims[1].busy_fractions)
            row = (f"| {name} | {spec} | {len(groups)} | {m:.1f} | {sims[0].images_per_s:.1f} | "
                   f"{sims[0].images_per_s / m:.3f} | {sims[1].images_per_s:.1f} | {sims[1].images_per_s / m:.3f} | "
                   f"{drift:.2f} | {mb} | {sb} |")
            lines.append(row)
            print(row, flush=True)
    return lines


def scaled_loads(loads: list[WorkerLoad], cpu_per_step: list[float]) -> list[WorkerLoad]:
    """Each worker's load rescaled so that a training step costs the CPU seconds its run measured."""
    if len(cpu_per_step) != len(loads):
        raise ValueError(f"{len(cpu_per_step)} workers' CPU seconds for {len(loads)} workers")
    out = []
    for load, cpu in zip(loads, cpu_per_step, strict=True):
        f = cpu / (load.emit_s + load.tail_s)
        out.append(replace(load, emit_s=load.emit_s * f, tail_s=load.tail_s * f, eval_s=load.eval_s * f))
    return out


def gpu_prediction(out_png: Path | None, batch: int = 128, d: int = 4, gpus: int = 10) -> list[str]:
    """ResNet-110 d on `gpus` GPUs from FLOPs: K = 1..gpus workers, speedup over BP on one GPU."""
    modules, x, y, num_layers = modules_of("resnet110", "auglocal", d, 2)
    flops = module_costs_flops(modules, x, y)
    shares, out_bytes = forward_shares(modules, x)
    primary = [c * s for c, s in zip(flops, shares, strict=True)]
    times = module_times_from_flops(flops, primary, GPU_MACS_PER_S, batch)
    bp_modules, xb, yb, _ = modules_of("resnet110", "bp", 2, 2)
    bp_step = module_costs_flops(bp_modules, xb, yb)[0] * batch / GPU_MACS_PER_S
    events = run_events(50_000 // batch, 1, 10_000 // batch)
    lines = ["## 4. Prediction for `--gpus 0-9`: ResNet-110, AugLocal d = 4, batch 128", "",
             f"**From FLOPs, not measured on a GPU.** Module times = 3 x (primary + aux) forward MACs / "
             f"{GPU_MACS_PER_S:.0e} MAC/s (an assumed effective rate); links {GPU_LINK.latency_s * 1e6:.0f} us + "
             f"bytes / {GPU_LINK.bytes_per_s / 1e9:.0f} GB/s (device -> pinned host -> ipc -> device); one epoch "
             "of CIFAR-10 (391 steps, 79 test batches, the epoch-end marker); partition by FLOPs. BP = the "
             f"whole network's 3 x forward MACs on one GPU: {batch / bp_step:,.0f} images/s. Ideal ceiling "
             f"(L+1)/(d+1) = {(num_layers + 1) / (d + 1):.1f}x over BP.", "",
             "| K (GPUs) | simulated images/s | speedup over BP | plan speedup (no links) | busy (min..max) |",
             "|---:|---:|---:|---:|---|"]
    ks, speedups = [], []
    for k in range(1, gpus + 1):
        plan = make_plan(modules, k, batch, flops, unit="MAC")
        sim = simulate(events, worker_loads(plan.groups, times, [b * batch for b in out_bytes]), batch, GPU_LINK,
                       input_bytes=x[0].numel() * 4 * batch)
        speedup = sim.images_per_s * bp_step / batch
        ks.append(k)
        speedups.append(speedup)
        lines.append(f"| {k} | {sim.images_per_s:,.0f} | {speedup:.2f}x | "
                     f"{plan.speedup * bp_step / (sum(flops) * batch / GPU_MACS_PER_S):.2f}x | "
                     f"{100 * min(sim.busy_fractions):.0f}%..{100 * max(sim.busy_fractions):.0f}% |")
    if out_png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ks, speedups, "o-", label="simulated pipeline (from FLOPs)")
        ax.axhline((num_layers + 1) / (d + 1), ls="--", c="gray", label="ideal (L+1)/(d+1)")
        ax.axhline(1.0, ls=":", c="k", label="BP on one GPU")
        ax.set_xlabel("workers K (one GPU each)")
        ax.set_ylabel("speedup over BP")
        ax.set_title(f"ResNet-110, AugLocal d={d}, batch {batch} - from FLOPs, not measured on a GPU", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_png, dpi=120)
        plt.close(fig)
        lines += ["", f"Plot: `{out_png.name}` (next to this file; not committed)."]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet32", "resnet56", "resnet110"])
    p.add_argument("--depths", nargs="+", type=int, default=[2, 3, 4, 5, 6])
    p.add_argument("--batch", type=int, default=32, help="batch of the ledger and the measured runs")
    p.add_argument("--timing-steps", type=int, default=2, help="timed steps per module timing")
    p.add_argument("--steps", type=int, default=8, help="steady steps of each measured pipeline run")
    p.add_argument("--plan-depths", nargs="+", type=int, default=None,
                   help="d values of section 2 (default: --depths)")
    p.add_argument("--validate-models", nargs="+", default=["resnet20", "resnet32"])
    p.add_argument("--validate-workers", nargs="+", default=["2", "3", "layer"])
    p.add_argument("--round-trips", type=int, default=500, help="latency samples of the link measurement")
    p.add_argument("--skip", nargs="*", default=[], choices=("ledger", "plan", "validate", "gpus"))
    p.add_argument("--out", default=None, help="write the Markdown here (and the plot next to it)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = ["# Speedup ledger: the (d+1)/(L+1) promise, the pipeline and its simulator", "",
             f"Machine: {machine()}; load average {load} at the start.",
             "Command: `python -m benchmarks.speedup " + " ".join(argv if argv is not None else
                                                                  __import__("sys").argv[1:]) + "`", ""]
    if args.skip:
        lines += [f"Sections not run this time: {', '.join(args.skip)} (`bash benchmarks/record_cpu.sh speedup` runs "
                  "all of them).", ""]
    if "ledger" not in args.skip:
        lines += ledger(args.models, args.depths, args.batch, args.timing_steps) + [""]
    if "plan" not in args.skip:
        lines += measured_vs_plan(args.plan_depths or args.depths, args.batch, args.steps) + [""]
    if "validate" not in args.skip:
        link = measured_link(args.round_trips)
        lines += validation(args.validate_models, args.validate_workers, 4, args.batch, args.steps, link) + [""]
    if "gpus" not in args.skip:
        png = Path(args.out).with_name("speedup_gpus.png") if args.out else None
        lines += gpu_prediction(png) + [""]
    lines.append(f"Load average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}.")
    emit(lines, args.out)


if __name__ == "__main__":
    main()

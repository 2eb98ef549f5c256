"""Throughput of sequential BP, the sequential AugLocal trainer and the pipeline, measured side by side.

Every figure comes from this one run on this machine: ResNet-32, AugLocal d = 4 (tau 0.5), batch 128,
synthetic 32x32 data (10 classes). Sequential figures time `--steps` training steps after one warm-up step in
this process with the given torch thread count. Pipeline figures run the real coordinator and worker
processes (one torch thread each) and report steady-state images/s: the time between the completion of
step 2 and the last step, so the pipeline fill and process start-up are excluded. The predicted figure of a
plan comes from per-module times measured at one thread before the run (auglocal.engine.planning), the busy fraction
from the workers' own compute time over the pipeline's wall clock.

Where a K = 1 worker's time goes (issue 10): `py-spy record --subprocesses -- python -m auglocal.launch.cli --dataset
synthetic --model resnet32 --workers 1 --batch-size 64 --max-steps 12` puts 96.6 % of the worker's samples
inside Stage.train_step (the code the sequential trainer runs), 1.5 % in start-up and under 1 % in receiving,
sending and reporting metrics. The worker-side overhead was the allocator policy (`return`, about 2x slower
on CPU), now `keep` by default; what remains between K = 1 and the sequential trainer is machine noise,
hence the repeats below.

Robustness on a shared machine: the three compared configurations (sequential AugLocal at 1 thread, the
pipeline at K = 1 and K = 2) run `--repeats` times interleaved, and each figure is the median with its range.

    python -m benchmarks.throughput                 # prints the table
    python -m benchmarks.throughput --out benchmarks/results/throughput.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from auglocal.engine.config import RunConfig, build_network, optim_and_schedule, resolve
from auglocal.engine.data import build_dataset
from auglocal.engine.planning import PipelinePlan
from auglocal.engine.trainer import SequentialTrainer
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline

from benchmarks.memory import machine
from benchmarks.report import emit


def config(rule: str, steps: int, batch: int, d: int) -> tuple[RunConfig, object]:
    data = build_dataset("synthetic", seed=0, input_size=32, num_classes=10, train_size=batch * (steps + 2),
                         test_size=batch)
    cfg = RunConfig(model="resnet32", rule=rule, d=d, dataset="synthetic", epochs=1, batch_size=batch, lr=0.05,
                    warmup=0, seed=0, input_size=32, num_classes=10)
    return resolve(cfg, data), data


def sequential_images_per_s(rule: str, threads: int, steps: int, batch: int, d: int) -> float:
    cfg, data = config(rule, steps, batch, d)
    torch.set_num_threads(threads)
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed)
    batches = [data.train_batch(cfg.seed, 0, s, batch) for s in range(steps + 1)]
    trainer.train_step(*batches[0], 0, 0)
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        trainer.train_step(*batches[s], 0, s)
    return steps * batch / (time.perf_counter() - t0)


def pipeline_run(k: int, steps: int, batch: int, d: int, malloc: str) -> dict:
    cfg, data = config("auglocal", steps, batch, d)
    cfg.max_steps = steps + 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        opts = PipelineOptions(workers=str(k), balance="time", threads=1, malloc=malloc)
        code = train_pipeline(cfg, data, opts, out=str(out), progress=False)
        if code != 0:
            raise RuntimeError(f"pipeline K={k} failed with exit code {code}")
        return json.loads((out / "summary.json").read_text())


def sequential_fresh(rule: str, threads: int, steps: int, batch: int, d: int, malloc: str) -> float:
    """A sequential figure in a fresh process: glibc's allocator policy cannot be undone within a process."""
    env = dict(os.environ)
    if malloc == "return":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--child", rule, str(threads), str(steps), str(batch),
           str(d)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    """'median (min..max)' of repeated measurements."""
    return f"{statistics.median(values):.1f} ({min(values):.1f}..{max(values):.1f})"


def ratio_text(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        rule, threads, steps, batch, d = sys.argv[2], *map(int, sys.argv[3:7])
        print(sequential_images_per_s(rule, threads, steps, batch, d))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="measured steps per configuration and repeat")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the compared configurations")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--malloc", choices=("keep", "return"), default="keep",
                   help="allocator policy of every row (default keep, the default of every command)")
    p.add_argument("--out", default=None, help="also write the report as Markdown to this file")
    args = p.parse_args()
    bs, steps, d, malloc = args.batch_size, args.steps, args.d, args.malloc
    load_before = os.getloadavg()
    # Context rows, measured once.
    bp2 = sequential_fresh("bp", 2, steps, bs, d, malloc)
    al2 = sequential_fresh("auglocal", 2, steps, bs, d, malloc)
    # The compared configurations, interleaved A B C A B C A B C: slow drifts of a shared machine hit all alike.
    seq: list[float] = []
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.repeats):
        seq.append(sequential_fresh("auglocal", 1, steps, bs, d, malloc))
        for k in (1, 2):
            runs[k].append(pipeline_run(k, steps, bs, d, malloc))
    measured = {k: [r["steady_images_per_s"] for r in runs[k]] for k in runs}
    predicted = {k: [PipelinePlan.from_dict(r["plan"]).predicted_images_per_s for r in runs[k]] for k in runs}
    ratio = {k: [m / p for m, p in zip(measured[k], predicted[k], strict=True)] for k in runs}
    busy = {k: [statistics.median(r["busy_fractions"][w] for r in runs[k]) for w in range(k)] for k in runs}
    med = statistics.median
    lines = [f"# Throughput: ResNet-32, AugLocal d={d}, batch {bs}, synthetic 32x32", "",
             f"Machine: {machine()}; load average {', '.join(f'{v:.2f}' for v in load_before)} before, "
             f"{', '.join(f'{v:.2f}' for v in os.getloadavg())} after.",
             f"Command: `python -m benchmarks.throughput --steps {steps} --repeats {args.repeats}`; allocator "
             f"`{malloc}` everywhere (`--worker-malloc {malloc}`).",
             f"The compared rows (b) 1 thread and (c) ran {args.repeats} time(s) interleaved "
             "(seq, K=1, K=2, seq, K=1, K=2, ...): median (min..max). Rows (a) and (b) 2 threads ran once, "
             "for context.",
             "Sequential rows run in a fresh process each; pipeline rows are steady-state (after the fill).",
             "Predicted = batch / slowest group's time, per-module times measured at 1 thread in the coordinator "
             "process before each run.", "",
             "| configuration | measured images/s | predicted images/s | worker busy (median) |", "|---|---:|---:|---|",
             f"| (a) sequential BP, 2 threads | {bp2:.1f} | - | |",
             f"| (b) sequential AugLocal, 2 threads | {al2:.1f} | - | |",
             f"| (b) sequential AugLocal, 1 thread | {spread(seq)} | - | |"]
    for k in (1, 2):
        shown = " / ".join(f"{100 * b:.0f}%" for b in busy[k])
        lines.append(f"| (c) pipeline K={k}, 1 thread per worker | {spread(measured[k])} | {spread(predicted[k])} "
                     f"| {shown} |")
    k1_seq = [m / s for m, s in zip(measured[1], seq, strict=True)]
    k2_k1 = [b / a for a, b in zip(measured[1], measured[2], strict=True)]

    def verdict(values: list[float], lo: float, hi: float = float("inf")) -> str:
        return "met" if lo <= med(values) <= hi else "MISSED"

    lines += ["", "Ratios, each from the runs of one repeat, median (min..max) over repeats; target and verdict:",
              f"- pipeline K=1 / sequential AugLocal 1 thread = {ratio_text(k1_seq)}; target >= 0.95: "
              f"{verdict(k1_seq, 0.95)}",
              f"- pipeline K=2 / pipeline K=1 = {ratio_text(k2_k1)}; target >= 1.8: {verdict(k2_k1, 1.8)}"]
    for k in (1, 2):
        lines.append(f"- K={k} measured / predicted = {ratio_text(ratio[k])}; target 0.85..1.15: "
                     f"{verdict(ratio[k], 0.85, 1.15)}")
    lines += [f"- pipeline K=2 / sequential AugLocal 2 threads = {med(measured[2]) / al2:.3f}",
              f"- sequential AugLocal / BP, 2 threads = {al2 / bp2:.3f}"]
    emit(lines, args.out)


if __name__ == "__main__":
    main()

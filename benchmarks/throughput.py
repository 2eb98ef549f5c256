"""Throughput of sequential BP, the sequential AugLocal trainer and the pipeline, measured side by side.

Every figure comes from this one run on this machine: ResNet-32, AugLocal d = 4 (tau 0.5), batch 128,
synthetic 32x32 data (10 classes). Sequential figures time `--steps` training steps after one warm-up step in
this process with the given torch thread count. Pipeline figures run the real coordinator and worker
processes (one torch thread each) and report steady-state images/s: the time between the completion of
step 2 and the last step, so the pipeline fill and process start-up are excluded. The predicted figure of a
plan comes from per-module times measured at one thread before the run (engine.planning), the busy fraction
from the workers' own compute time over the pipeline's wall clock.

    python -m benchmarks.throughput                 # prints the table
    python -m benchmarks.throughput --out benchmarks/results/throughput.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.memory import machine
from engine.config import RunConfig, build_network, optim_and_schedule, resolve
from engine.data import build_dataset
from engine.planning import PipelinePlan
from engine.trainer import SequentialTrainer
from launch.pipeline import PipelineOptions, train_pipeline


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


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        rule, threads, steps, batch, d = sys.argv[2], *map(int, sys.argv[3:7])
        print(sequential_images_per_s(rule, threads, steps, batch, d))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="measured steps per configuration")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--out", default=None, help="also write the report as Markdown to this file")
    args = p.parse_args()
    bs, steps, d = args.batch_size, args.steps, args.d
    rows: list[tuple[str, float, float | None, str]] = []
    seq = {}
    for malloc in ("keep", "return"):
        bp2 = sequential_fresh("bp", 2, steps, bs, d, malloc)
        al1 = sequential_fresh("auglocal", 1, steps, bs, d, malloc)
        al2 = sequential_fresh("auglocal", 2, steps, bs, d, malloc)
        seq[malloc] = (bp2, al1, al2)
        rows += [(f"(a) sequential BP, 2 threads [{malloc}]", bp2, None, ""),
                 (f"(b) sequential AugLocal, 1 thread [{malloc}]", al1, None, ""),
                 (f"(b) sequential AugLocal, 2 threads [{malloc}]", al2, None, "")]
    runs = {}
    for malloc in ("keep", "return"):
        for k in (1, 2):
            s = pipeline_run(k, steps, bs, d, malloc)
            runs[malloc, k] = s
            plan = PipelinePlan.from_dict(s["plan"])
            busy = " / ".join(f"{100 * b:.0f}%" for b in s["busy_fractions"])
            rows.append((f"(c) pipeline K={k}, 1 thread per worker [{malloc}]", s["steady_images_per_s"],
                         plan.predicted_images_per_s, busy))
    lines = [f"# Throughput: ResNet-32, AugLocal d={d}, batch {bs}, synthetic 32x32", "",
             f"Machine: {machine()}. {steps} measured steps per row; "
             f"`python -m benchmarks.throughput --steps {steps}`.",
             "Sequential rows run in a fresh process each; pipeline rows are steady-state (after the fill).",
             "[keep] = glibc's default heap reuse; [return] = freed memory goes back to the OS "
             "(MALLOC_MMAP_THRESHOLD_=65536 / mallopt, the workers' default, `--worker-malloc return`).",
             "Predicted = batch / slowest group's time, per-module times measured at 1 thread in the coordinator "
             "process (glibc default) before the run.", "",
             "| configuration | measured images/s | predicted images/s (d) | worker busy (e) |", "|---|---:|---:|---|"]
    for name, measured, predicted, busy in rows:
        pred = f"{predicted:.1f}" if predicted else "-"
        lines.append(f"| {name} | {measured:.1f} | {pred} | {busy} |")
    lines += ["", "Ratios (targets in brackets):"]
    for malloc in ("keep", "return"):
        bp2, al1, al2 = seq[malloc]
        k1, k2 = runs[malloc, 1]["steady_images_per_s"], runs[malloc, 2]["steady_images_per_s"]
        lines += [f"- [{malloc}] pipeline K=1 / sequential AugLocal 1 thread = {k1 / al1:.3f} (>= 0.95)",
                  f"- [{malloc}] pipeline K=2 / pipeline K=1 = {k2 / k1:.3f} (>= 1.8)",
                  f"- [{malloc}] pipeline K=2 / sequential AugLocal 2 threads = {k2 / al2:.3f}",
                  f"- [{malloc}] sequential AugLocal / BP, 2 threads = {al2 / bp2:.3f}"]
        for k in (1, 2):
            pred = PipelinePlan.from_dict(runs[malloc, k]["plan"]).predicted_images_per_s
            if pred:
                lines.append(f"- [{malloc}] K={k} measured / predicted = "
                             f"{runs[malloc, k]['steady_images_per_s'] / pred:.3f} (within 0.85..1.15)")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()

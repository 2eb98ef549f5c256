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


def pipeline_run(k: int, steps: int, batch: int, d: int) -> dict:
    cfg, data = config("auglocal", steps, batch, d)
    cfg.max_steps = steps + 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code = train_pipeline(cfg, data, PipelineOptions(workers=str(k), balance="time", threads=1),
                              out=str(out), progress=False)
        if code != 0:
            raise RuntimeError(f"pipeline K={k} failed with exit code {code}")
        return json.loads((out / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="measured steps per configuration")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--out", default=None, help="also write the report as Markdown to this file")
    args = p.parse_args()
    bs, steps, d = args.batch_size, args.steps, args.d
    rows: list[tuple[str, float, float | None, str]] = []

    bp2 = sequential_images_per_s("bp", 2, steps, bs, d)
    rows.append(("(a) sequential BP, 2 threads", bp2, None, ""))
    al1 = sequential_images_per_s("auglocal", 1, steps, bs, d)
    rows.append(("(b) sequential AugLocal, 1 thread", al1, None, ""))
    al2 = sequential_images_per_s("auglocal", 2, steps, bs, d)
    rows.append(("(b) sequential AugLocal, 2 threads", al2, None, ""))
    torch.set_num_threads(1)
    runs = {k: pipeline_run(k, steps, bs, d) for k in (1, 2)}
    for k, s in runs.items():
        plan = PipelinePlan.from_dict(s["plan"])
        predicted = plan.predicted_images_per_s
        busy = " / ".join(f"{100 * b:.0f}%" for b in s["busy_fractions"])
        rows.append((f"(c) pipeline K={k}, 1 thread per worker", s["steady_images_per_s"], predicted, busy))

    k1, k2 = runs[1]["steady_images_per_s"], runs[2]["steady_images_per_s"]
    lines = [f"# Throughput: ResNet-32, AugLocal d={d}, batch {bs}, synthetic 32x32", "",
             f"Machine: {machine()}. {steps} measured steps per row; "
             f"`python -m benchmarks.throughput --steps {steps}`.", "",
             "| configuration | measured images/s | predicted images/s (d) | worker busy (e) |",
             "|---|---:|---:|---|"]
    for name, measured, predicted, busy in rows:
        pred = f"{predicted:.1f}" if predicted else "-"
        lines.append(f"| {name} | {measured:.1f} | {pred} | {busy} |")
    lines += ["", "Ratios (targets in brackets):",
              f"- pipeline K=1 / sequential AugLocal 1 thread = {k1 / al1:.3f} (>= 0.95: transport costs < 5 %)",
              f"- pipeline K=2 / pipeline K=1 = {k2 / k1:.3f} (>= 1.8)",
              f"- sequential AugLocal 2 threads / sequential BP 2 threads = {al2 / bp2:.3f}",
              f"- pipeline K=2 / sequential BP 2 threads = {k2 / bp2:.3f}"]
    for k, s in runs.items():
        plan_pred = rows[3 + k - 1][2]
        if plan_pred:
            lines.append(f"- K={k} measured / predicted = {s['steady_images_per_s'] / plan_pred:.3f} "
                         "(within 0.85..1.15)")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()

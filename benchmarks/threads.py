"""Thread workers against process workers on CPU: memory and start-up with many workers, and throughput with two.

(a) ResNet-110, AugLocal d = 4, `--workers layer` (one worker per local module), run through the command line
    once as processes and once as threads (all in one host process): the peak memory of the whole run and the
    time from launch to the first finished minibatch. Memory is the sum of the resident set sizes (RSS) of
    the launcher and every process below it (forkserver, workers or host), sampled with psutil every
    `--sample-s` seconds; the peak of that sum is reported. RSS counts pages shared with the forkserver (torch's
    code and data) once per process, which is what the machine has to hold for separate address spaces to
    exist; `uss` is reported too at the peak sample (memory no other process shares).
(b) ResNet-32, AugLocal d = 4, K = 2, batch 128: steady-state images/s (after the fill, from summary.json) of
    thread workers and process workers, interleaved (thread, process, thread, ...) `--repeats` times in this
    one run, median (min..max) and the per-repeat ratio thread / process.

    python -m benchmarks.threads                       # prints the report
    python -m benchmarks.threads --out benchmarks/results/threads.md
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

import psutil
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline

from benchmarks.memory import machine
from benchmarks.report import emit
from benchmarks.throughput import config, ratio_text, spread

REPO = Path(__file__).resolve().parents[1]


def tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(sum of RSS, number of processes) of `root` and all its descendants."""
    rss = n = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            n += 1
        except psutil.Error:
            continue
    return rss, n


def tree_uss(root: psutil.Process) -> int:
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_full_info().uss
        except psutil.Error:
            continue
    return total


def first_step_seen(out: Path) -> bool:
    metrics = out / "metrics.jsonl"
    try:
        return any('"kind": "step"' in line or '"kind":"step"' in line
                   for line in metrics.read_text().splitlines())
    except OSError:
        return False


def layer_run(kind: str, steps: int, batch: int, sample_s: float, timeout: float) -> dict:
    """One `--workers layer` ResNet-110 run through the CLI, watched from outside."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "auglocal.launch.cli", "--model", "resnet110", "--rule", "auglocal", "--d", "4",
               "--dataset", "synthetic", "--input-size", "32", "--num-classes", "10",
               "--train-size", str(batch * steps), "--test-size", str(batch), "--batch-size", str(batch),
               "--epochs", "1", "--workers", "layer", "--balance", "flops", "--worker-kind", kind,
               "--gpus", "cpu", "--no-progress", "--no-tensorboard", "--out", str(out)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        root = psutil.Process(proc.pid)
        peak = (0, 0)
        peak_uss = 0
        first_step = None
        while proc.poll() is None:
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                raise RuntimeError(f"{kind} run took over {timeout} s")
            sample = tree_memory(root)
            if sample[0] > peak[0]:
                peak = sample
                peak_uss = tree_uss(root)
            if first_step is None and first_step_seen(out):
                first_step = time.perf_counter() - t0
            time.sleep(sample_s)
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} run failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        return {"peak_rss": peak[0], "peak_uss": peak_uss, "processes": peak[1], "first_step_s": first_step,
                "total_s": total}


def k2_run(kind: str, steps: int, batch: int) -> float:
    cfg, data = config("auglocal", steps, batch, 4)
    cfg.max_steps = steps + 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        opts = PipelineOptions(workers="2", balance="auto", threads=1, worker_kind=kind, tensorboard=False)
        if train_pipeline(cfg, data, opts, out=str(out), progress=False) != 0:
            raise RuntimeError(f"K=2 {kind} run failed")
        return json.loads((out / "summary.json").read_text())["steady_images_per_s"]


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layer-steps", type=int, default=3, help="minibatches of the ResNet-110 layer runs")
    p.add_argument("--layer-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12, help="measured steps of each K=2 run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sample-s", type=float, default=0.25, help="memory sampling period")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds allowed for one layer run")
    p.add_argument("--skip-layer", action="store_true", help="only part (b)")
    p.add_argument("--out", default=None, help="also write the report as Markdown to this file")
    args = p.parse_args()
    load_before = os.getloadavg()
    lines = ["# Thread workers vs process workers (CPU)", "",
             f"Machine: {machine()}; load average {', '.join(f'{v:.2f}' for v in load_before)} before "
             "(this machine is shared with other jobs: see the after figure too).",
             f"Command: `python -m benchmarks.threads --layer-steps {args.layer_steps} --layer-batch "
             f"{args.layer_batch} --steps {args.steps} --repeats {args.repeats}"
             f"{' --skip-layer' if args.skip_layer else ''}`.", ""]
    if not args.skip_layer:
        layer = {kind: layer_run(kind, args.layer_steps, args.layer_batch, args.sample_s, args.timeout)
                 for kind in ("thread", "process")}
        ratio = layer["thread"]["peak_rss"] / layer["process"]["peak_rss"]
        lines += [f"## (a) ResNet-110 d=4 `--workers layer`, batch {args.layer_batch}, {args.layer_steps} "
                  "minibatches + 1 test batch", "",
                  "Peak of the summed RSS of the launcher and all processes below it (psutil, sampled every "
                  f"{args.sample_s} s); USS summed at that same sample; start-up = launch to the first step row "
                  "in metrics.jsonl.", "",
                  "| worker kind | processes at peak | peak RSS (sum) | USS (sum) at peak | launch to first step | "
                  "whole run |", "|---|---:|---:|---:|---:|---:|"]
        for kind, r in layer.items():
            first = f"{r['first_step_s']:.1f} s" if r["first_step_s"] is not None else "n/a"
            lines.append(f"| {kind} | {r['processes']} | {gib(r['peak_rss'])} | {gib(r['peak_uss'])} | {first} | "
                         f"{r['total_s']:.1f} s |")
        verdict = "met" if ratio <= 1 / 3 else "MISSED"
        lines += ["", f"- peak RSS threads / processes = {ratio:.3f}; target <= 0.333: {verdict}", ""]
    thread: list[float] = []
    process: list[float] = []
    for _ in range(args.repeats):
        thread.append(k2_run("thread", args.steps, 128))
        process.append(k2_run("process", args.steps, 128))
    ratios = [t / q for t, q in zip(thread, process, strict=True)]
    verdict = "met" if statistics.median(ratios) >= 1.0 else "MISSED"
    lines += ["## (b) ResNet-32 d=4, K=2, batch 128: steady-state images/s", "",
              f"{args.repeats} interleaved repeats (thread, process, ...), {args.steps} measured steps each, "
              "`--balance auto` (module times measured once, then cached: the same partition for both kinds), "
              "1 torch thread per worker: median (min..max).", "",
              "| worker kind | images/s |", "|---|---:|",
              f"| thread (one host process) | {spread(thread)} |", f"| process | {spread(process)} |", "",
              f"- thread / process, per repeat: {ratio_text(ratios)}; target >= 1.0: {verdict}",
              f"- load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}"]
    emit(lines, args.out)


if __name__ == "__main__":
    main()

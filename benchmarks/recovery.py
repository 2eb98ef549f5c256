"""Recovery time after a worker dies: ResNet-32, AugLocal d = 4, K = 2 workers, synthetic 32x32 data, batch 64.

Each repetition runs the real pipeline (coordinator in this process, worker processes) on one epoch of
`--steps` minibatches with a checkpoint every `--checkpoint-every`. A watcher thread SIGKILLs worker 1 once
`--kill-after` minibatches have finished (so the kill lands in the middle of a step, at a moment the runtime
does not choose), and light probes on the coordinator note when things happen. Per repetition:

- detect: from the kill to the coordinator's failure detection (it polls worker liveness while it waits),
- recovery_s: summary.json `restarts[0].recovery_s`, from the detection to the first minibatch finished by the
  new workers, split into stop (old workers stopped, sockets closed), spawn (new workers forked, stages built,
  checkpoint loaded, all ready) and first step (the first replayed minibatch through the whole pipeline),
- replayed: minibatches finished before the kill that were fed again (after the restart checkpoint),
- total: wall time of the run, against a run without a fault.

    python -m benchmarks.recovery                      # 3 repetitions, prints the table
    python -m benchmarks.recovery --out benchmarks/results/recovery.md
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.memory import machine
from engine.config import RunConfig, resolve
from engine.data import build_dataset
from launch import coordinator as coordinator_module
from launch.pipeline import PipelineOptions, train_pipeline

MODEL, D, K, BATCH, INPUT = "resnet32", 4, 2, 64, 32


def config(steps: int) -> tuple[RunConfig, object]:
    data = build_dataset("synthetic", seed=0, input_size=INPUT, num_classes=10, train_size=BATCH * steps,
                         test_size=BATCH)
    cfg = RunConfig(model=MODEL, rule="auglocal", d=D, dataset="synthetic", epochs=1, batch_size=BATCH, lr=0.05,
                    warmup=0, seed=0, input_size=INPUT, num_classes=10)
    return resolve(cfg, data), data


class Probe:
    """Timestamps (perf_counter) of each attempt's start/ready/failure/shutdown, and its worker processes."""

    def __init__(self):
        self.attempts: list[dict] = []
        self.failed_at: float | None = None
        self.stopped_at: float | None = None

    @contextmanager
    def installed(self):
        cls = coordinator_module.Coordinator
        start, fail, shutdown = cls.start, cls._fail, cls.shutdown
        probe = self

        def timed_start(coord):
            entry = {"coord": coord, "begin": time.perf_counter()}
            probe.attempts.append(entry)
            start(coord)
            entry["ready"] = time.perf_counter()

        def timed_fail(coord, rank, what, *rest):
            if probe.failed_at is None:
                probe.failed_at = time.perf_counter()
            return fail(coord, rank, what, *rest)

        def timed_shutdown(coord):
            shutdown(coord)
            if probe.failed_at is not None and probe.stopped_at is None:
                probe.stopped_at = time.perf_counter()

        cls.start, cls._fail, cls.shutdown = timed_start, timed_fail, timed_shutdown
        try:
            yield self
        finally:
            cls.start, cls._fail, cls.shutdown = start, fail, shutdown


def kill_when(probe: Probe, run_dir: Path, after_steps: int, rank: int, killed: dict) -> None:
    """Watcher thread: once `after_steps` minibatches are logged, SIGKILL worker `rank` of the first attempt."""
    metrics = run_dir / "metrics.jsonl"
    while True:
        if probe.attempts and metrics.exists():
            steps = sum(1 for line in metrics.read_text().splitlines() if '"kind": "step"' in line)
            if steps >= after_steps:
                procs = probe.attempts[0]["coord"].procs
                killed["at"] = time.perf_counter()
                killed["steps_done"] = steps
                os.kill(procs[rank].pid, signal.SIGKILL)
                return
        time.sleep(0.005)


def one_run(steps: int, every: int, kill_after: int | None) -> dict:
    cfg, data = config(steps)
    opts = PipelineOptions(workers=str(K), balance="flops", threads=1, checkpoint_every=every)
    probe = Probe()
    killed: dict = {}
    with tempfile.TemporaryDirectory() as tmp, probe.installed():
        out = Path(tmp) / "run"
        watcher = None
        if kill_after is not None:
            watcher = threading.Thread(target=kill_when, args=(probe, out, kill_after, 1, killed), daemon=True)
            watcher.start()
        t0 = time.perf_counter()
        code = train_pipeline(cfg, data, opts, out=str(out), progress=False)
        total = time.perf_counter() - t0
        summary = json.loads((out / "summary.json").read_text())
    if code != 0 or set(summary["updates"].values()) != {summary["expected_updates"]}:
        raise RuntimeError(f"run failed (exit code {code}) or update counters disagree: {summary['updates']}")
    row = {"total_s": total}
    if kill_after is None:
        return row
    if len(summary["restarts"]) != 1:
        raise RuntimeError(f"expected one restart, got {summary['restarts']}")
    restart = summary["restarts"][0]
    second = probe.attempts[1]
    first_done = second["coord"].stats.first_step_done
    from_step = second["coord"].start_at.global_step
    row.update(detect_s=probe.failed_at - killed["at"], recovery_s=restart["recovery_s"],
               stop_s=probe.stopped_at - probe.failed_at, spawn_s=second["ready"] - second["begin"],
               first_step_s=first_done - second["ready"], replayed=killed["steps_done"] - from_step,
               restart_from=from_step, error=restart["error"])
    return row


def table(clean: list[dict], faulted: list[dict]) -> list[str]:
    lines = ["| run | detect (s) | recovery_s | = stop | + spawn | + first step | replayed | total (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(faulted, 1):
        lines.append(f"| kill {i} | {r['detect_s']:.3f} | {r['recovery_s']:.2f} | {r['stop_s']:.2f} | "
                     f"{r['spawn_s']:.2f} | {r['first_step_s']:.2f} | {r['replayed']} (from {r['restart_from']}) | "
                     f"{r['total_s']:.1f} |")
    for i, r in enumerate(clean, 1):
        lines.append(f"| no fault {i} | - | - | - | - | - | - | {r['total_s']:.1f} |")
    med = {k: statistics.median(r[k] for r in faulted) for k in ("detect_s", "recovery_s", "total_s")}
    lines.append(f"| **median (kill)** | {med['detect_s']:.3f} | {med['recovery_s']:.2f} | | | | | "
                 f"{med['total_s']:.1f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=12, help="minibatches in the run (one epoch)")
    p.add_argument("--checkpoint-every", type=int, default=4)
    p.add_argument("--kill-after", type=int, default=6, help="kill worker 1 once this many minibatches are done")
    p.add_argument("--clean-runs", type=int, default=1, help="runs without a fault, for the total time")
    p.add_argument("--out", default=None, help="also write the results as Markdown to this file")
    args = p.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    clean = [one_run(args.steps, args.checkpoint_every, None) for _ in range(args.clean_runs)]
    faulted = [one_run(args.steps, args.checkpoint_every, args.kill_after) for _ in range(args.repeats)]
    load_after = os.getloadavg()
    lines = [
        "# Recovery benchmark",
        "",
        f"- Machine: {machine()}; load average {load[0]:.2f} before, {load_after[0]:.2f} after",
        f"- {MODEL}, AugLocal d = {D}, K = {K} CPU workers (1 torch thread each), synthetic {INPUT}x{INPUT}, "
        f"batch {BATCH}, {args.steps} minibatches, checkpoint every {args.checkpoint_every}; worker 1 SIGKILLed "
        f"once {args.kill_after} minibatches were done ({args.repeats} repetitions).",
        "- Command: `python -m benchmarks.recovery"
        + (f" --out {args.out}`" if args.out else "`"),
        "",
        *table(clean, faulted),
        "",
        "detect: kill -> the coordinator raises WorkerFailed (it polls worker liveness every 50 ms while it",
        "waits on a full link or for results). recovery_s (summary.json): detection -> the first minibatch",
        "finished by the new attempt = stop (terminate and join the old workers, close sockets) + spawn (fork",
        "from the forkserver, rebuild each stage, load the checkpoint's per-layer files, all ready) + first",
        "step (the first replayed minibatch through both workers). replayed: minibatches already finished at",
        "the kill that were trained again from the restart checkpoint (global step in brackets); the rest of",
        "the extra total time is that replay. Failure: " + faulted[0]["error"] + ".",
    ]
    if max(load[0], load_after[0]) > (os.cpu_count() or 1):
        lines.append("Other jobs shared this machine while it ran (load average above the core count): the "
                     "compute-bound parts (spawn, first step, total) are slower than on an idle machine.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

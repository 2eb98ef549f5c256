"""Recovery after a worker dies: one-worker recovery against the whole-pipeline restart, and the replay log's cost.

Each repetition runs the real pipeline (coordinator in this process, worker processes) on one epoch of
`--steps` minibatches (AugLocal d = 4, synthetic 32x32 data, batch 64) with a checkpoint every
`--checkpoint-every`. One-worker recovery's replacement is a warm spare (`--spares`, default 1; 0: a cold
start, the way to measure what the spare saves). A watcher thread SIGKILLs one worker once `--kill-after`
minibatches have finished (so the kill lands in the middle of a step, at a moment the runtime does not choose),
once with `--recovery one` and once with `--recovery all`. Per repetition:

- detect: from the kill to the coordinator's failure detection,
- ready: from the detection to the restarted worker(s) reporting ready (stop + fork + build + load),
- first step: from the detection to the first minibatch the restarted pipeline completes (whole restart: a
  replayed one; one-worker recovery: replayed minibatches were complete already, so this is the next),
- caught up: from the detection to the completion of the first minibatch that was not complete when the
  failure was detected: the pipeline is back where it was (summary.json `recovery_s` of a one-worker
  recovery),
- total: wall time of the run (the medians give one-worker recovery's over the whole restart's, which must
  not exceed 1); and the replay logs' cost: the most bytes one worker logged in one checkpoint
  interval, and its peaks in memory and on disk (`--replay-log-mb` bounds the memory part).

    python -m benchmarks.recovery --model resnet32 --workers 2 4     # prints the table
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
from auglocal.engine.config import RunConfig, resolve
from auglocal.engine.data import build_dataset
from auglocal.launch.run import coordinator as coordinator_module
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline

from benchmarks.memory import machine

D, BATCH, INPUT = 4, 64, 32


def config(model: str, steps: int) -> tuple[RunConfig, object]:
    data = build_dataset("synthetic", seed=0, input_size=INPUT, num_classes=10, train_size=BATCH * steps,
                         test_size=BATCH)
    cfg = RunConfig(model=model, rule="auglocal", d=D, dataset="synthetic", epochs=1, batch_size=BATCH, lr=0.05,
                    warmup=0, seed=0, input_size=INPUT, num_classes=10)
    return resolve(cfg, data), data


class Probe:
    """Timestamps (perf_counter) of each attempt's start/ready and of the first failure; the coordinators."""

    def __init__(self):
        self.attempts: list[dict] = []
        self.failed_at: float | None = None
        self.done_at_failure: int | None = None

    @contextmanager
    def installed(self):
        cls = coordinator_module.Coordinator
        start, fail = cls.start, cls._fail
        probe = self

        def timed_start(coord):
            entry = {"coord": coord, "begin": time.perf_counter()}
            probe.attempts.append(entry)
            start(coord)
            entry["ready"] = time.perf_counter()

        def timed_fail(coord, rank, what, *args):
            if probe.failed_at is None:
                probe.failed_at = time.perf_counter()
                probe.done_at_failure = coord.tracker.steps_done
            return fail(coord, rank, what, *args)

        cls.start, cls._fail = timed_start, timed_fail
        try:
            yield self
        finally:
            cls.start, cls._fail = start, fail


def kill_when(probe: Probe, run_dir: Path, after_steps: int, rank: int, killed: dict) -> None:
    """Watcher thread: once `after_steps` minibatches are logged, SIGKILL worker `rank` of the first attempt."""
    metrics = run_dir / "metrics.jsonl"
    while True:
        if probe.attempts and metrics.exists():
            steps = sum(1 for line in metrics.read_text().splitlines() if '"kind": "step"' in line)
            if steps >= after_steps:
                killed["at"] = time.perf_counter()
                killed["steps_done"] = steps
                os.kill(probe.attempts[0]["coord"].workers[rank].pid, signal.SIGKILL)
                return
        time.sleep(0.005)


def one_run(model: str, workers: str, steps: int, every: int, kill_after: int | None, rank: int,
            recovery: str, log_mb: float, spares: int = 1) -> dict:
    cfg, data = config(model, steps)
    opts = PipelineOptions(workers=workers, balance="flops", threads=1, checkpoint_every=every, recovery=recovery,
                           replay_log_mb=log_mb, spares=spares)
    probe = Probe()
    killed: dict = {}
    with tempfile.TemporaryDirectory() as tmp, probe.installed():
        out = Path(tmp) / "run"
        if kill_after is not None:
            threading.Thread(target=kill_when, args=(probe, out, kill_after, rank, killed), daemon=True).start()
        t0 = time.perf_counter()
        code = train_pipeline(cfg, data, opts, out=str(out), progress=False)
        total = time.perf_counter() - t0
        summary = json.loads((out / "summary.json").read_text())
    if code != 0 or set(summary["updates"].values()) != {summary["expected_updates"]}:
        raise RuntimeError(f"run failed (exit code {code}) or update counters disagree: {summary['updates']}")
    logs = summary.get("replay_log", {}).values()
    row = {"total_s": total, "k": len(summary["plan"]["groups"]),
           "log_interval_mb": max((v["max_interval_bytes"] for v in logs), default=0) / 2**20,
           "log_memory_mb": max((v["peak_memory_bytes"] for v in logs), default=0) / 2**20,
           "log_disk_mb": max((v["peak_disk_bytes"] for v in logs), default=0) / 2**20}
    if kill_after is None:
        return row
    if len(summary["restarts"]) != 1:
        raise RuntimeError(f"expected one restart, got {summary['restarts']}")
    restart = summary["restarts"][0]
    if restart.get("path") != recovery:
        raise RuntimeError(f"asked for --recovery {recovery}, got {restart}")
    detected = probe.failed_at
    if recovery == "all":
        second = probe.attempts[1]
        stats, from_step = second["coord"].stats, second["coord"].start_at.global_step
        ready = second["ready"]
        first = stats.first_step_done
        caught_up = stats.step_done_at[probe.done_at_failure - from_step]
        restart_from = from_step
    else:
        coord = probe.attempts[0]["coord"]
        ready = detected + restart["ready_s"]
        # a failure in the run's tail may leave no minibatch to complete after the restart: first = ready then
        first = min((t for t in coord.stats.step_done_at if t > ready), default=ready)
        caught_up = detected + restart["recovery_s"]
        restart_from = coord.recovery.recoveries[0].restart_from
    row.update(detect_s=detected - killed["at"], ready_s=ready - detected, first_s=first - detected,
               caught_up_s=caught_up - detected, done_at_kill=killed["steps_done"], restart_from=restart_from,
               error=restart["error"], after_stop=restart.get("after_stop", False), spare=restart.get("spare", False))
    return row


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | K | recovery | run | detect (s) | ready (s) | first step (s) | caught up (s) | "
             "log / interval (MiB) | log peak mem / disk (MiB) | total (s) |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        faulted = "detect_s" in r
        timing = (f"{r['detect_s']:.3f} | {r['ready_s']:.2f} | {r['first_s']:.2f} | {r['caught_up_s']:.2f}"
                  if faulted else "- | - | - | -")
        lines.append(f"| {r['model']} | {r['k']} | {r['recovery']} | {r['run']} | {timing} | "
                     f"{r['log_interval_mb']:.1f} | {r['log_memory_mb']:.1f} / {r['log_disk_mb']:.1f} | "
                     f"{r['total_s']:.1f} |")
    return lines


def medians(rows: list[dict]) -> list[str]:
    out = ["| model | K | median caught up, one (s) | median caught up, all (s) | one / all | "
           "median first step, one / all (s) | median total, one / all (s) | total one / all |",
           "|---|---:|---:|---:|---:|---|---|---:|"]
    for key in sorted({(r["model"], r["k"]) for r in rows if "detect_s" in r}):
        by = {rec: [r for r in rows if (r["model"], r["k"]) == key and r["recovery"] == rec and "detect_s" in r]
              for rec in ("one", "all")}
        if not by["one"] or not by["all"]:
            continue
        one = statistics.median(r["caught_up_s"] for r in by["one"])
        whole = statistics.median(r["caught_up_s"] for r in by["all"])
        f1 = statistics.median(r["first_s"] for r in by["one"])
        fa = statistics.median(r["first_s"] for r in by["all"])
        t1 = statistics.median(r["total_s"] for r in by["one"])
        ta = statistics.median(r["total_s"] for r in by["all"])
        out.append(f"| {key[0]} | {key[1]} | {one:.2f} | {whole:.2f} | **{one / whole:.2f}** | {f1:.2f} / {fa:.2f} "
                   f"| {t1:.2f} / {ta:.2f} | {t1 / ta:.2f} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet32")
    p.add_argument("--workers", nargs="+", default=["2", "4"], help="K values (or 'layer') to measure")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=12, help="minibatches in the run (one epoch)")
    p.add_argument("--checkpoint-every", type=int, default=4)
    p.add_argument("--kill-after", type=int, default=6, help="kill once this many minibatches are done")
    p.add_argument("--kill-rank", type=int, default=None, help="worker to kill (default: K // 2, a middle one)")
    p.add_argument("--replay-log-mb", type=float, default=256.0)
    p.add_argument("--spares", type=int, default=1, help="warm spares of the one-worker path (0: a cold start)")
    p.add_argument("--paths", nargs="+", choices=("one", "all"), default=["one", "all"],
                   help="recovery paths to measure")
    p.add_argument("--clean-runs", type=int, default=1, help="runs without a fault, for the total time")
    p.add_argument("--out", default=None, help="append the results as Markdown to this file")
    args = p.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    rows = []
    for workers in args.workers:
        k_guess = int(workers) if workers.isdigit() else None
        for i in range(args.clean_runs):
            row = one_run(args.model, workers, args.steps, args.checkpoint_every, None, 0, "one",
                          args.replay_log_mb, args.spares)
            rows.append({**row, "model": args.model, "recovery": "-", "run": f"no fault {i + 1}"})
            k_guess = row["k"]
        if k_guess is None and args.kill_rank is None:
            raise SystemExit(f"--workers {workers}: give --kill-rank, or --clean-runs 1 to learn K")
        rank = args.kill_rank if args.kill_rank is not None else k_guess // 2
        for i in range(args.repeats):
            for recovery in args.paths:
                row = one_run(args.model, workers, args.steps, args.checkpoint_every, args.kill_after, rank,
                              recovery, args.replay_log_mb, args.spares)
                tail = (" (after the stop marker)" if row.get("after_stop") else "") + (
                    ", warm spare" if row.get("spare") else "")
                rows.append({**row, "model": args.model, "recovery": recovery, "run": f"kill w{rank} {i + 1}{tail}"})
                print(table(rows)[-1], flush=True)
    load_after = os.getloadavg()
    faulted = [r for r in rows if "detect_s" in r]
    lines = [
        f"## {args.model}, K = {', '.join(args.workers)}",
        "",
        f"- Machine: {machine()}; load average {load[0]:.2f} before, {load_after[0]:.2f} after",
        f"- {args.model}, AugLocal d = {D}, CPU workers (1 torch thread each), synthetic {INPUT}x{INPUT}, batch "
        f"{BATCH}, {args.steps} minibatches, checkpoint every {args.checkpoint_every}; worker "
        f"{'K // 2' if args.kill_rank is None else args.kill_rank} SIGKILLed "
        f"once {args.kill_after} minibatches were done ({args.repeats} repetitions per path), replay logs "
        f"bounded to {args.replay_log_mb:g} MiB in memory.",
        f"- Command: `python -m benchmarks.recovery --model {args.model} --workers {' '.join(args.workers)} "
        f"--repeats {args.repeats} --steps {args.steps} --checkpoint-every {args.checkpoint_every} --kill-after "
        f"{args.kill_after}{'' if args.kill_rank is None else f' --kill-rank {args.kill_rank}'} "
        f"--clean-runs {args.clean_runs} --replay-log-mb {args.replay_log_mb:g} --spares {args.spares} --paths "
        f"{' '.join(args.paths)}`",
        "",
        *table(rows),
        "",
        *medians(rows),
        "",
        "Failure: " + (faulted[0]["error"] if faulted else "-") + ".",
        f"One-worker replacements that were warm spares: {sum(r['spare'] for r in faulted if r['recovery'] == 'one')}"
        f" of {sum(r['recovery'] == 'one' for r in faulted)} (--spares {args.spares}).",
    ]
    if max(load[0], load_after[0]) > (os.cpu_count() or 1):
        lines.append("Other jobs shared this machine while it ran (load average above the core count): "
                     "compute-bound parts (ready, first step, total) are slower than on an idle machine.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()

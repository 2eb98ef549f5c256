"""Runtime overhead benchmark: what the worker loop itself costs per step, per tree, measured side by side.

    python -m benchmarks.overhead --tree /tmp/old --out benchmarks/results/overhead.md

A null-compute pipeline of K = 1, 2, 4 real worker processes (the engine's worker loop, ipc links, control
inboxes, replay log; a stage that hands its input on) fed by a driver playing the coordinator, so the steady
step rate is the runtime's own cost (benchmarks/overhead_pipeline.py). Beside it, in the same run: the ipc
link's 16 KB one-way hop against bare pyzmq's, and the worker's replay-log append of one 8 MB message against
one 8 MB memory copy. Every figure is a median over `--repeats` runs, interleaved: each repeat measures every
tree in turn, so an old commit (`--tree PATH`: a `git worktree add PATH <commit>`) and this tree share the
machine's load. Each tree runs in its own interpreter with PYTHONPATH at that tree, so its auglocal is
imported. Then one instrumented run per tree and K breaks each worker's step into its parts (receive, decode,
validate, control poll, stage, send, credit, metrics, log): inclusive microseconds per step, timers included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "overhead_pipeline.py")
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_label(tree: str) -> str:
    """The tree's commit (short hash), '+edits' when its working tree differs from it."""
    try:
        head = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.path.basename(os.path.abspath(tree))
    return head + ("+edits" if dirty else "")


def child(tree: str, *args: str, timeout: float = 600) -> dict:
    """One measurement in a fresh interpreter importing `tree`'s auglocal; its JSON line."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, CHILD, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} on {tree} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if os.path.realpath(out["tree"]) != os.path.realpath(tree):
        raise RuntimeError(f"the child imported auglocal from {out['tree']}, not {tree}")
    return out


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(args) -> dict:
    trees = args.tree or [HERE]
    runs: dict = {"pipeline": {}, "hop": {}, "log": {}, "breakdown": {}, "load": [load()]}
    for rep in range(args.repeats):
        for k in args.workers:
            for tree in trees:
                got = child(tree, "pipeline", "--workers", str(k), "--steps", str(args.steps),
                            "--warmup", str(args.warmup))
                runs["pipeline"].setdefault(tree, {}).setdefault(k, []).append(got)
                print(f"[{rep + 1}/{args.repeats}] K={k} {tree_label(tree)}: step {got['step_us']:.0f} us, "
                      f"worker CPU {[round(c) for c in got['worker_cpu_us']]} us/step", file=sys.stderr)
        for tree in trees:
            got = child(tree, "hop", "--round-trips", str(args.round_trips))
            runs["hop"].setdefault(tree, []).append(got)
            got = child(tree, "log", "--round-trips", str(args.log_reps))
            runs["log"].setdefault(tree, []).append(got)
            print(f"[{rep + 1}/{args.repeats}] {tree_label(tree)}: hop {runs['hop'][tree][-1]}, log {got}",
                  file=sys.stderr)
        runs["load"].append(load())
    if not args.no_breakdown:
        for k in args.workers:
            for tree in trees:
                got = child(tree, "pipeline", "--workers", str(k), "--steps", str(args.steps // 2),
                            "--warmup", str(args.warmup), "--breakdown")
                runs["breakdown"].setdefault(tree, {})[k] = got["breakdown_us"]
    runs["trees"] = trees
    return runs


def _median(values) -> float:
    return statistics.median(values)


def report(runs: dict, argv: list[str]) -> str:
    trees, labels = runs["trees"], {t: tree_label(t) for t in runs["trees"]}
    base = trees[0]
    lines = ["# Runtime overhead (null-compute pipeline)", "",
             f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; "
             f"Python {platform.python_version()}",
             f"- Load average (1, 5, 15 min) before and after each repeat: {' | '.join(runs['load'])}",
             f"- Command: `python -m benchmarks.overhead {' '.join(argv)}`",
             f"- Trees: {', '.join(f'{labels[t]} ({t})' for t in trees)}; interleaved, medians of "
             f"{len(runs['hop'][base])} repeats", "",
             "## Per-step runtime cost", "",
             "Worker CPU: each worker process's CPU time (all its threads) per step, averaged over the workers; "
             "step: wall time per step of the whole pipeline (K workers and the driver share the cores).", "",
             "| K | tree | worker CPU (us/step) | step wall (us) | driver CPU (us/step) | worker CPU vs first |",
             "|---:|---|---:|---:|---:|---:|"]
    for k in sorted(runs["pipeline"][base]):
        first = None
        for tree in trees:
            got = runs["pipeline"][tree][k]
            cpu = _median([statistics.mean(g["worker_cpu_us"]) for g in got])
            first = cpu if first is None else first
            lines.append(f"| {k} | {labels[tree]} | {cpu:.0f} | {_median([g['step_us'] for g in got]):.0f} | "
                         f"{_median([g['driver_cpu_us'] for g in got]):.0f} | {cpu / first:.2f} |")
    lines += ["", "## 16 KB one-way hop (half a ping-pong, median of each run, then median of runs)", "",
              "| tree | bare pyzmq (us) | ipc link (us) | link / pyzmq |", "|---|---:|---:|---:|"]
    for tree in trees:
        hops = runs["hop"][tree]
        ratios = [h["link_us"] / h["plain_us"] for h in hops]
        lines.append(f"| {labels[tree]} | {_median([h['plain_us'] for h in hops]):.1f} | "
                     f"{_median([h['link_us'] for h in hops]):.1f} | {_median(ratios):.2f} "
                     f"({', '.join(f'{r:.2f}' for r in ratios)}) |")
    lines += ["", "## Replay-log append of one 8 MB message against one 8 MB copy (into an allocated buffer)", "",
              "Append: the worker's `_log` call; copy: one 8 MB `copy_` into an allocated tensor, right after it; "
              "thread: how long the log's background thread (where a tree has one) still worked on the entry "
              "after the copy (its checksum, on another core: not on the step's path).", "",
              "| tree | append (us) | copy (us) | append / copy | thread after the copy (us) |",
              "|---|---:|---:|---:|---:|"]
    for tree in trees:
        logs = runs["log"][tree]
        ratios = [g["append_us"] / g["copy_us"] for g in logs]
        thread = _median([g.get("thread_us", 0) for g in logs])
        lines.append(f"| {labels[tree]} | {_median([g['append_us'] for g in logs]):.0f} | "
                     f"{_median([g['copy_us'] for g in logs]):.0f} | {_median(ratios):.3f} "
                     f"({', '.join(f'{r:.3f}' for r in ratios)}) | {thread:.0f} |")
    if runs["breakdown"]:
        lines += ["", "## Where a worker's step goes (one instrumented run; inclusive us per step, timers "
                  "included; 'receive' includes the wait for input)", ""]
        for k in sorted(runs["breakdown"][base]):
            parts = sorted({p for t in trees for w in runs["breakdown"][t][k] for p in w})
            header = [f"{labels[t]} w{r}" for t in trees for r in range(len(runs["breakdown"][t][k]))]
            lines += [f"K = {k}:", "", f"| part | {' | '.join(header)} |", "|---|" + "---:|" * len(header)]
            for part in parts:
                cells = [f"{w[part]:.1f}" if part in w else "-" for t in trees for w in runs["breakdown"][t][k]]
                lines.append(f"| {part} | {' | '.join(cells)} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append",
                        help="a checkout to measure (repeat: the first is the base of the ratios); default: this one")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="pipeline depths (default 1 2 4)")
    parser.add_argument("--steps", type=int, default=4000, help="measured steps per pipeline run")
    parser.add_argument("--warmup", type=int, default=300, help="steps before the measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (medians are reported)")
    parser.add_argument("--round-trips", type=int, default=2000, help="16 KB ping-pongs per hop measurement")
    parser.add_argument("--log-reps", type=int, default=40, help="8 MB appends per replay-log measurement")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the instrumented runs")
    parser.add_argument("--out", help="also write the Markdown report here")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    for tree in args.tree or []:
        if not os.path.isdir(os.path.join(tree, "workers", "runtime")):
            parser.error(f"--tree: {tree} is not an auglocal checkout (no workers/runtime/ in it)")
    started = time.time()
    text = report(measure(args), argv)
    text += f"\nTook {time.time() - started:.0f} s.\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

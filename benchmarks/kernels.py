"""Images/s per memory format and precision: sequential BP, sequential AugLocal and the pipeline with K = 2.

ResNet-32, AugLocal d = 4 (tau 0.5), synthetic 32x32 data (10 classes), all in one run on this machine
(`--device cuda --model resnet110` for the GPU rows of benchmarks/gpu_check.sh: trainer on cuda:0, both
pipeline workers sharing it, the clock read after torch.cuda.synchronize).
Sequential figures run in this process at one torch thread (glibc's default heap, like `--worker-malloc keep`),
each configuration built and warmed up once, then timed for `--steps` steps (`--half-steps` in bf16/fp16, which
is slow on CPUs without native bf16 kernels). Pipeline figures run the real coordinator and two worker
processes (one thread each, `--worker-malloc keep`, FLOP-balanced) and report steady-state images/s (between
the completions of step 2 and the last step: 2 extra steps fill the pipeline). Every cell is repeated
`--repeats` times, the repeats interleaved over all cells (so a change in machine load hits every cell alike);
the table gives the median and min..max.

    python -m benchmarks.kernels --out benchmarks/results/kernels.md        # writes its own section
    python -m benchmarks.kernels --device cuda --model resnet110 --batch-size 1024 --steps 8 --half-steps 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from auglocal.engine.config import RunConfig, build_network, optim_and_schedule, resolve
from auglocal.engine.data import build_dataset
from auglocal.engine.precision import Kernels
from auglocal.engine.trainer import SequentialTrainer
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline

from benchmarks.memory import machine

CELLS = [(f, p) for p in ("fp32", "bf16") for f in ("contiguous", "channels_last")]
ROWS = ("sequential BP", "sequential AugLocal", "pipeline K=2 AugLocal")


def write_section(path: str | Path, name: str, text: str) -> None:
    """Replace (or append) the section `name` of a Markdown file, so several scripts can share one file."""
    path = Path(path)
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# Kernel-level speed: memory format and precision\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + block
    path.write_text(new + ("" if new.endswith("\n") else "\n"))


@dataclass(frozen=True)
class Setting:
    """What every cell of one table shares."""

    model: str
    d: int
    batch: int
    device: str

    def config(self, rule: str, memory_format: str, precision: str, steps: int) -> tuple[RunConfig, object]:
        data = build_dataset("synthetic", seed=0, input_size=32, num_classes=10,
                             train_size=self.batch * (steps + 3), test_size=self.batch)
        cfg = RunConfig(model=self.model, rule=rule, d=self.d, dataset="synthetic", epochs=1, batch_size=self.batch,
                        lr=0.05, warmup=0, seed=0, input_size=32, num_classes=10, device=self.device,
                        memory_format=memory_format, precision=precision)
        return resolve(cfg, data), data


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sequential_timer(setting: Setting, rule: str, memory_format: str, precision: str,
                     steps: int) -> Callable[[], float]:
    """Build and warm up one trainer; the returned function times `steps` more steps and gives images/s."""
    cfg, data = setting.config(rule, memory_format, precision, steps)
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed, device=cfg.device,
                                kernels=Kernels.from_config(cfg))
    batches = [data.train_batch(cfg.seed, 0, s, setting.batch) for s in range(steps + 1)]
    trainer.train_step(*batches[0], 0, 0)
    calls = [0]

    def timed() -> float:
        calls[0] += 1
        _sync(cfg.device)
        t0 = time.perf_counter()
        for s in range(1, steps + 1):
            trainer.train_step(*batches[s], 0, calls[0] * steps + s)
        _sync(cfg.device)
        return steps * setting.batch / (time.perf_counter() - t0)

    return timed


def pipeline_images_per_s(setting: Setting, memory_format: str, precision: str, steps: int) -> float:
    cfg, data = setting.config("auglocal", memory_format, precision, steps)
    cfg.max_steps = steps + 2
    gpus = [setting.device] if setting.device.startswith("cuda") else None
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        out = Path(tmp) / "run"
        opts = PipelineOptions(workers="2", gpus=gpus, balance="flops", threads=1, malloc="keep")
        code = train_pipeline(cfg, data, opts, out=str(out), progress=False)
        if code != 0:
            raise RuntimeError(f"pipeline {memory_format} {precision} failed with exit code {code}")
        return json.loads((out / "summary.json").read_text())["steady_images_per_s"]


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}..{max(values):.1f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet32")
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (cuda:0; the pipeline's 2 workers share it)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed steps per fp32 cell")
    p.add_argument("--half-steps", type=int, default=1, help="timed steps per bf16 cell (pipeline: at least 2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the table as the throughput section of this Markdown file")
    args = p.parse_args()
    torch.set_num_threads(1)
    bs = args.batch_size
    device = "cuda:0" if args.device == "cuda" else args.device
    setting = Setting(args.model, args.d, bs, device)
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    def steps_of(precision: str, pipeline: bool = False) -> int:
        n = args.steps if precision == "fp32" else args.half_steps
        return max(n, 2) if pipeline else n

    timers = {(rule, f, prec): sequential_timer(setting, "bp" if rule == ROWS[0] else "auglocal", f, prec,
                                                steps_of(prec))
              for rule in ROWS[:2] for f, prec in CELLS}
    figures: dict[tuple[str, str, str], list[float]] = {(r, f, p_): [] for r in ROWS for f, p_ in CELLS}
    for rep in range(args.repeats):
        for f, prec in CELLS:
            for rule in ROWS[:2]:
                figures[rule, f, prec].append(timers[rule, f, prec]())
            figures[ROWS[2], f, prec].append(pipeline_images_per_s(setting, f, prec, steps_of(prec, pipeline=True)))
        # a report after every repeat: a run cut short on a busy machine still leaves its figures
        text = report(args, setting, figures, rep + 1, load_before, time.perf_counter() - t_start)
        print(f"repeat {rep + 1}/{args.repeats} done, {time.perf_counter() - t_start:.0f} s", flush=True)
        if args.out:
            write_section(args.out, f"throughput-{args.device}-{args.model}-b{bs}", text)
    print(text)


def report(args: argparse.Namespace, setting: Setting, figures: dict[tuple[str, str, str], list[float]],
           done: int, load_before: tuple[float, float, float], wall: float) -> str:
    """The Markdown table of medians (min..max) and the ratios of medians, after `done` repeats."""
    med = {k: statistics.median(v) for k, v in figures.items()}
    bs, device = setting.batch, setting.device
    cmd = (f"python -m benchmarks.kernels --model {args.model} --d {args.d} --device {args.device} "
           f"--batch-size {bs} --steps {args.steps} --half-steps {args.half_steps} --repeats {args.repeats}")
    where = (torch.cuda.get_device_name(0) if device.startswith("cuda")
             else f"{machine()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    partial = "" if done == args.repeats else f" (cut short: {done} of {args.repeats} repeats done)"
    lines = [f"## Throughput (images/s): {args.model}, AugLocal d = {args.d}, batch {bs}, synthetic 32x32, "
             f"{args.device}", "",
             f"Machine: {where}; load average {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
             f"end (1-minute `uptime`); {wall / 60:.1f} minutes{partial}. Command:", "", f"    {cmd}", "",
             f"Median of {done} interleaved repeats (min..max). Sequential: 1 CPU thread, {args.steps} timed "
             f"steps (fp32) / {args.half_steps} (bf16) after a warm-up step. Pipeline: 2 workers, 1 thread each, "
             "steady state after the fill.", "",
             "| configuration | " + " | ".join(f"{f} {p_}" for f, p_ in CELLS) + " |",
             "|---|" + "---:|" * len(CELLS)]
    for rule in ROWS:
        lines.append(f"| {rule} | " + " | ".join(fmt(figures[rule, f, p_]) for f, p_ in CELLS) + " |")
    lines += ["", "Ratios of medians:"]
    for rule in ROWS:
        lines.append(f"- {rule}: channels_last / contiguous = "
                     f"{med[rule, 'channels_last', 'fp32'] / med[rule, 'contiguous', 'fp32']:.2f} (fp32), "
                     f"{med[rule, 'channels_last', 'bf16'] / med[rule, 'contiguous', 'bf16']:.2f} (bf16); "
                     f"bf16 / fp32 = {med[rule, 'contiguous', 'bf16'] / med[rule, 'contiguous', 'fp32']:.2f} "
                     f"(contiguous), {med[rule, 'channels_last', 'bf16'] / med[rule, 'channels_last', 'fp32']:.2f} "
                     "(channels_last)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

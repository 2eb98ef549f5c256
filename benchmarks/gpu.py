"""GPU figures: ResNet-110, AugLocal d = 4, synthetic CIFAR-size data, BP vs sequential AugLocal vs pipeline.

Run by benchmarks/gpu_check.sh on a CUDA machine. Sequential rows time `--steps` steps after two warm-up
steps (torch.cuda.synchronize around the clock) and report torch.cuda.max_memory_allocated. Pipeline rows
run the real coordinator with K workers sharing one GPU (each worker its own process and CUDA context) and
report steady-state images/s; peak memory is the sum of the workers' max_memory_allocated. Stream rows
(`--streams`) run N thread workers in one host process on GPU 0, each on its own CUDA stream (issue 13); their
peak is that process's max_memory_allocated. The table file is rewritten after every row, so a run stopped by
its time budget keeps the rows it finished.

    python -m benchmarks.gpu --batch-sizes 128 1024 --out benchmarks/results/gpu.md

`--device cpu` is the smoke path (gpu_check.sh's dry run, with tiny sizes): the same rows on CPU, stream rows
as N thread workers in one host process, no memory figures (the column reads n/a), so a bad flag or a broken
row fails on a CPU machine before it can waste GPU time:

    python -m benchmarks.gpu --device cpu --model resnet20 --input-size 16 --batch-sizes 8 --steps 2 \
        --workers --streams 1 2
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from auglocal.engine.config import RunConfig, build_network, optim_and_schedule, resolve
from auglocal.engine.data import build_dataset
from auglocal.engine.trainer import SequentialTrainer
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline


@dataclass(frozen=True)
class Bench:
    """What every row shares: the device, the network and the synthetic images' side."""

    device: str
    model: str
    d: int
    input_size: int

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def setup(self, rule: str, batch: int, steps: int):
        data = build_dataset("synthetic", seed=0, input_size=self.input_size, num_classes=10,
                             train_size=batch * (steps + 3), test_size=batch)
        cfg = RunConfig(model=self.model, rule=rule, d=self.d, dataset="synthetic", epochs=1, batch_size=batch,
                        lr=0.05, warmup=0, seed=0, input_size=self.input_size, num_classes=10, device=self.device)
        return resolve(cfg, data), data

    def sync(self) -> None:
        if self.on_gpu:
            torch.cuda.synchronize(self.device)


def sequential(b: Bench, rule: str, batch: int, steps: int) -> tuple[float, float | None]:
    cfg, data = b.setup(rule, batch, steps)
    net, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(net, aux, optim, schedule, seed=0, device=b.device)
    batches = [data.train_batch(0, 0, s, batch) for s in range(steps + 2)]
    for s in range(2):
        trainer.train_step(*batches[s], 0, s)
    b.sync()
    if b.on_gpu:
        torch.cuda.reset_peak_memory_stats(b.device)
    t0 = time.perf_counter()
    for s in range(2, steps + 2):
        trainer.train_step(*batches[s], 0, s)
    b.sync()
    ips = steps * batch / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(b.device) / 1e9 if b.on_gpu else None
    del trainer, net, aux
    if b.on_gpu:
        torch.cuda.empty_cache()
    return ips, peak


def _run(b: Bench, batch: int, steps: int, what: str, **options) -> dict:
    cfg, data = b.setup("auglocal", batch, steps)
    cfg.max_steps = steps + 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        opts = PipelineOptions(gpus=[b.device] if b.on_gpu else None, balance="flops", threads=1,
                               tensorboard=False, **options)
        if train_pipeline(cfg, data, opts, out=str(out), progress=False) != 0:
            raise RuntimeError(f"pipeline with {what} failed")
        return json.loads((out / "summary.json").read_text())


def pipeline(b: Bench, k: int, batch: int, steps: int) -> tuple[float, float | None]:
    s = _run(b, batch, steps, f"{k} process workers", workers=str(k))
    return s["steady_images_per_s"], sum(s["gpu_peak_bytes"].values()) / 1e9 if b.on_gpu else None


def stream_pipeline(b: Bench, n: int, batch: int, steps: int) -> tuple[float, float | None]:
    """The pipeline with `n` thread workers on GPU 0, each on its own CUDA stream, in one host process: the
    peak is that process's max_memory_allocated (every worker reports the same process-wide figure). On CPU:
    `n` thread workers in one host process."""
    s = _run(b, batch, steps, f"{n} stream workers", workers=str(n), worker_kind="thread",
             streams_per_gpu=n if b.on_gpu else 0)
    return s["steady_images_per_s"], max(s["gpu_peak_bytes"].values()) / 1e9 if b.on_gpu else None


def _cell(peak: float | None) -> str:
    return "n/a" if peak is None else f"{peak:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda:0", help="cuda:N, or cpu: the smoke path (gpu_check.sh's dry run)")
    p.add_argument("--model", default="resnet110")
    p.add_argument("--input-size", type=int, default=32, help="side of the synthetic images (default 32, CIFAR)")
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, nargs="*", default=[2, 4],
                   help="pipeline rows with K process workers sharing GPU 0 (none: --workers with no value)")
    p.add_argument("--streams", type=int, nargs="*", default=[],
                   help="pipeline rows with N thread workers on GPU 0, one CUDA stream each (e.g. 1 2 4 8)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    b = Bench(args.device, args.model, args.d, args.input_size)
    if b.on_gpu and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (or --device cpu, the smoke path)")
    if not b.on_gpu and (args.workers or args.streams):
        # the smoke path's figures are no measurements: start the forkserver (its torch, torch._dynamo and stage
        # imports, seconds) now, beside the sequential rows, instead of before the first pipeline row. On a GPU
        # it starts there, so that nothing competes with the timed sequential steps.
        from auglocal.launch.backends.registry import BY_NAME, ONE_HOST

        BY_NAME[ONE_HOST].start_warming_up()
    name = torch.cuda.get_device_name(b.device) if b.on_gpu else "CPU smoke path (not a GPU figure)"
    lines = [f"# GPU: {name}, {args.model}, d={args.d}, synthetic {args.input_size}x{args.input_size}", "",
             "| batch | configuration | images/s | peak GPU memory (GB) |", "|---:|---|---:|---:|"]
    print("\n".join(lines), flush=True)

    def emit(*new: str) -> None:
        lines.extend(new)
        print("\n".join(new), flush=True)
        if args.out:    # after every row: a run stopped by its budget keeps what it measured
            Path(args.out).write_text("\n".join(lines) + "\n")

    for bs in args.batch_sizes:
        rows = []
        cases = [("sequential BP", functools.partial(sequential, b, "bp", bs, args.steps)),
                 ("sequential AugLocal", functools.partial(sequential, b, "auglocal", bs, args.steps))]
        cases += [(f"pipeline, {k} workers on one GPU", functools.partial(pipeline, b, k, bs, args.steps))
                  for k in args.workers]
        cases += [(f"pipeline, {n} stream worker(s) in one process",
                   functools.partial(stream_pipeline, b, n, bs, args.steps)) for n in args.streams]
        for label, measure in cases:
            ips, peak = measure()
            rows.append((label, ips))
            emit(f"| {bs} | {label} | {ips:.0f} | {_cell(peak)} |")
        base = rows[1][1]
        ratios = [f"{label}: {ips / base:.2f}x" for label, ips in rows[2:]]
        if ratios:
            emit("", f"batch {bs}, images/s over sequential AugLocal: " + "; ".join(ratios), "")

if __name__ == "__main__":
    main()

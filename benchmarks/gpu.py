"""GPU figures: ResNet-110, AugLocal d = 4, synthetic CIFAR-size data, BP vs sequential AugLocal vs pipeline.

Run by benchmarks/gpu_check.sh on a CUDA machine. Sequential rows time `--steps` steps after two warm-up
steps (torch.cuda.synchronize around the clock) and report torch.cuda.max_memory_allocated. Pipeline rows
run the real coordinator with K workers sharing one GPU (each worker its own process and CUDA context) and
report steady-state images/s; peak memory is the sum of the workers' max_memory_allocated. Stream rows
(`--streams`) run N thread workers in one host process on GPU 0, each on its own CUDA stream (issue 13); their
peak is that process's max_memory_allocated.

    python -m benchmarks.gpu --batch-sizes 128 1024 --out benchmarks/results/gpu.md
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from engine.config import RunConfig, build_network, optim_and_schedule, resolve
from engine.data import build_dataset
from engine.trainer import SequentialTrainer
from launch.pipeline import PipelineOptions, train_pipeline


def setup(rule: str, batch: int, steps: int, d: int, model: str):
    data = build_dataset("synthetic", seed=0, input_size=32, num_classes=10, train_size=batch * (steps + 3),
                         test_size=batch)
    cfg = RunConfig(model=model, rule=rule, d=d, dataset="synthetic", epochs=1, batch_size=batch, lr=0.05,
                    warmup=0, seed=0, input_size=32, num_classes=10, device="cuda:0")
    return resolve(cfg, data), data


def sequential(rule: str, batch: int, steps: int, d: int, model: str) -> tuple[float, float]:
    cfg, data = setup(rule, batch, steps, d, model)
    net, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(net, aux, optim, schedule, seed=0, device="cuda:0")
    batches = [data.train_batch(0, 0, s, batch) for s in range(steps + 2)]
    for s in range(2):
        trainer.train_step(*batches[s], 0, s)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for s in range(2, steps + 2):
        trainer.train_step(*batches[s], 0, s)
    torch.cuda.synchronize()
    ips = steps * batch / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 1e9
    del trainer, net, aux
    torch.cuda.empty_cache()
    return ips, peak


def pipeline(k: int, batch: int, steps: int, d: int, model: str) -> tuple[float, float]:
    cfg, data = setup("auglocal", batch, steps, d, model)
    cfg.max_steps = steps + 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        opts = PipelineOptions(workers=str(k), gpus=["cuda:0"], balance="flops", threads=1)
        if train_pipeline(cfg, data, opts, out=str(out), progress=False) != 0:
            raise RuntimeError(f"pipeline K={k} failed")
        s = json.loads((out / "summary.json").read_text())
    return s["steady_images_per_s"], sum(s.get("gpu_peak_bytes", {}).values()) / 1e9


def stream_pipeline(n: int, batch: int, steps: int, d: int, model: str) -> tuple[float, float]:
    """The pipeline with `n` thread workers on GPU 0, each on its own CUDA stream, in one host process: the
    peak is that process's max_memory_allocated (every worker reports the same process-wide figure)."""
    cfg, data = setup("auglocal", batch, steps, d, model)
    cfg.max_steps = steps + 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        opts = PipelineOptions(workers=str(n), gpus=["cuda:0"], balance="flops", threads=1, worker_kind="thread",
                               streams_per_gpu=n, tensorboard=False)
        if train_pipeline(cfg, data, opts, out=str(out), progress=False) != 0:
            raise RuntimeError(f"pipeline with {n} stream workers failed")
        s = json.loads((out / "summary.json").read_text())
    return s["steady_images_per_s"], max(s.get("gpu_peak_bytes", {0: 0}).values()) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet110")
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, nargs="*", default=[2, 4],
                   help="pipeline rows with K process workers sharing GPU 0 (none: --workers with no value)")
    p.add_argument("--streams", type=int, nargs="*", default=[],
                   help="pipeline rows with N thread workers on GPU 0, one CUDA stream each (e.g. 1 2 4 8)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    lines = [f"# GPU: {torch.cuda.get_device_name(0)}, {args.model}, d={args.d}, synthetic 32x32", "",
             "| batch | configuration | images/s | peak GPU memory (GB) |", "|---:|---|---:|---:|"]
    print("\n".join(lines), flush=True)
    for bs in args.batch_sizes:
        rows = [("sequential BP", *sequential("bp", bs, args.steps, args.d, args.model)),
                ("sequential AugLocal", *sequential("auglocal", bs, args.steps, args.d, args.model))]
        rows += [(f"pipeline, {k} workers on one GPU", *pipeline(k, bs, args.steps, args.d, args.model))
                 for k in args.workers]
        rows += [(f"pipeline, {n} stream worker(s) in one process", *stream_pipeline(n, bs, args.steps, args.d,
                                                                                      args.model))
                 for n in args.streams]
        for name, ips, peak in rows:
            line = f"| {bs} | {name} | {ips:.0f} | {peak:.2f} |"
            lines.append(line)
            print(line, flush=True)
        base = rows[1][1]
        ratios = [f"{name}: {ips / base:.2f}x" for name, ips, _ in rows[2:]]
        if ratios:
            lines += ["", f"batch {bs}, images/s over sequential AugLocal: " + "; ".join(ratios), ""]
            print(lines[-2], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

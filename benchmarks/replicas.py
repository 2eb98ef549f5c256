"""More devices than layers: DDP BP against AugLocal R x K, measured side by side here, then predicted for GPUs.

1. Measured in one run on this machine, global batch 128, ResNet-32, synthetic 32x32 data (10 classes):
   - DDP BP: 2 processes x 1 thread, gloo, torch.nn.parallel.DistributedDataParallel on the engine's BP network,
     64 images per process; the batches are built before timing (the pipeline's coordinator builds its batches
     during the run, on the same cores: this favours DDP by that work);
   - AugLocal d = 4, K = 2, R = 1: `python -m auglocal ... --workers 2 --gpus cpu`;
   - AugLocal d = 4, K = 1, R = 2: the same with `--workers 1 --replicas 2`, skipped with a line saying so while
     the CLI has no --replicas.
   Pipeline rows report the run's steady images/s (summary.json). Peak live-tensor bytes per process
   (benchmarks/live_tensors.py, torch.profiler's allocator events) over one step plus the tensors alive before
   it: DDP measured in its own processes (its gradient buckets, one more copy of the parameters, added); a
   pipeline worker's measured on its stage's modules in this process at its batch (a worker's compute, not its
   message buffers). Each measured row runs `--repeats` times, interleaved; the median and the range are shown.
2. The simulator's prediction (engine/planning/replicas.py, engine/planning/ddp.py), labelled as such: the
   2-core rows of section 1, then ResNet-110 and ResNet-32 (d = 4) on 8, 16 and 64 GPUs at 32 and 128 images
   per GPU, the best R x K layout against DDP BP with the same all-reduce model.

    python -m benchmarks.replicas --out benchmarks/results/replicas.md
    python -m benchmarks.replicas --quick          # a few steps, one repeat, for a check that it runs
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

from benchmarks.memory import machine
from benchmarks.report import emit

MODEL, D, BATCH, WORLD = "resnet32", 4, 128, 2
ROOT = Path(__file__).resolve().parents[1]      # the checkout whose auglocal the runs use


def _data(steps: int, batch: int = BATCH, input_size: int = 32):
    from auglocal.engine.data import build_dataset

    return build_dataset("synthetic", seed=0, input_size=input_size, num_classes=10,
                         train_size=batch * (steps + 3), test_size=batch)


def _ddp_rank(rank: int, init_file: str, steps: int, queue) -> None:
    import torch
    import torch.distributed as dist
    from auglocal.engine.config import RunConfig, build_network, resolve
    from torch.nn.parallel import DistributedDataParallel

    from benchmarks.live_tensors import tensor_bytes, track_live_bytes

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    data = _data(steps)
    cfg = resolve(RunConfig(model=MODEL, rule="bp", dataset="synthetic", batch_size=BATCH, seed=0), data)
    torch.manual_seed(0)
    model = DistributedDataParallel(build_network(cfg, data)[0])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    share = BATCH // WORLD
    batches = [tuple(t[rank * share:(rank + 1) * share] for t in data.train_batch(0, 0, s, BATCH))
               for s in range(steps + 3)]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for x, y in batches[:2]:
        step(x, y)
    dist.barrier()
    start = time.perf_counter()
    for x, y in batches[2:2 + steps]:
        step(x, y)
    dist.barrier()
    elapsed = time.perf_counter() - start
    x, y = batches[-1]
    params = list(model.parameters())
    resident = tensor_bytes(iter([*params, *model.buffers(), x, y, *(v for st in opt.state.values()
                                                                       for v in st.values()
                                                                       if isinstance(v, torch.Tensor))]))
    resident += sum(p.numel() * p.element_size() for p in params)    # DDP's buckets: a flat copy of the grads
    with track_live_bytes() as live:
        step(x, y)
    queue.put((rank, steps * BATCH / elapsed, (resident + live.peak) / 2**20))
    dist.destroy_process_group()


def ddp_bp(steps: int) -> tuple[float, float]:
    """(images/s of the whole run, peak live MB of the larger process) of DDP BP, 2 processes x 1 thread."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_ddp_rank, args=(r, os.path.join(tmp, "init"), steps, queue))
                 for r in range(WORLD)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=900) for _ in procs]
        for p in procs:
            p.join()
    return min(r[1] for r in results), max(r[2] for r in results)


def has_replicas_flag() -> bool:
    from auglocal.launch.cli import build_parser

    return any("--replicas" in a.option_strings for a in build_parser()._actions)


def pipeline(workers: int, replicas: int, steps: int) -> dict:
    """One `python -m auglocal` run of AugLocal d = 4; its summary.json."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "auglocal", "--model", MODEL, "--rule", "auglocal", "--d", str(D),
               "--dataset", "synthetic", "--train-size", str(BATCH * (steps + 3)), "--test-size", str(BATCH),
               "--batch-size", str(BATCH), "--epochs", "1", "--max-steps", str(steps + 2), "--workers",
               str(workers), "--gpus", "cpu", "--worker-threads", "1", "--no-tensorboard", "--out", str(out)]
        if replicas > 1:
            cmd += ["--replicas", str(replicas)]
        run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({run.returncode}): {run.stderr[-2000:]}")
        return json.loads((out / "summary.json").read_text())


def stage_live_mb(groups: list[list[int]], batch: int) -> list[float]:
    """Peak live MB of each stage's modules over one step at `batch` (and the tensors alive before it)."""
    import torch
    from auglocal.engine.config import RunConfig, build_network, optim_and_schedule, resolve
    from auglocal.engine.local_module import build_local_modules
    from auglocal.engine.stage import Stage

    from benchmarks.live_tensors import tensor_bytes, track_live_bytes

    torch.set_num_threads(1)
    data = _data(2)
    cfg = resolve(RunConfig(model=MODEL, rule="auglocal", d=D, dataset="synthetic", batch_size=batch, seed=0), data)
    modules = build_local_modules(*build_network(cfg, data))
    optim, schedule = optim_and_schedule(cfg)
    x, y = data.train_batch(0, 0, 0, batch)
    out = []
    for g in groups:
        with torch.no_grad():
            h = x
            for m in modules[:g[0]]:
                h = m(h)
        stage = Stage([modules[i] for i in g], optim, schedule, seed=0)
        stage.train_step(h, y, x, step=0)
        resident = tensor_bytes(iter([*stage.modules.parameters(), *stage.modules.buffers(), h, y,
                                      *(v for st in stage.optimizer.state.values() for v in st.values()
                                        if isinstance(v, torch.Tensor))]))
        with track_live_bytes() as live:
            stage.train_step(h, y, x, step=1)
        out.append((resident + live.peak) / 2**20)
    return out


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}..{max(values):.1f})" if len(values) > 1 else \
        f"{values[0]:.1f}"


def measured(steps: int, repeats: int) -> tuple[list[str], dict]:
    replicas = has_replicas_flag()
    rates: dict[str, list[float]] = {"ddp": [], "k2": [], "r2": []}
    memory: dict[str, float] = {}
    groups = {}
    loads = []
    for _ in range(repeats):
        rate, mem = ddp_bp(steps)
        rates["ddp"].append(rate)
        memory["ddp"] = mem
        summary = pipeline(2, 1, steps)
        rates["k2"].append(summary["steady_images_per_s"])
        groups["k2"] = summary["plan"]["groups"]
        if replicas:
            rates["r2"].append(pipeline(1, 2, steps)["steady_images_per_s"])
        loads.append(os.getloadavg()[0])
    memory["k2"] = max(stage_live_mb(groups["k2"], BATCH))
    memory["r2"] = stage_live_mb([[i for g in groups["k2"] for i in g]], BATCH // 2)[0]
    base = statistics.median(rates["ddp"])
    rows = [("DDP BP, 2 processes x 1 thread (gloo), 64 per process", "ddp"),
            ("AugLocal d = 4, K = 2, R = 1", "k2"), ("AugLocal d = 4, K = 1, R = 2", "r2")]
    lines = ["| layout | images/s | / DDP BP | peak live tensors per process (MB) |", "|---|---:|---:|---:|"]
    for name, key in rows:
        if not rates[key]:
            lines.append(f"| {name} | to be measured after merge (this CLI has no --replicas) | | "
                         f"{memory[key]:.1f} (the stage alone) |")
            continue
        lines.append(f"| {name} | {spread(rates[key])} | {statistics.median(rates[key]) / base:.2f} | "
                     f"{memory[key]:.1f} |")
    return lines, {"loads": loads, "rates": rates}


def allreduce_table(repeats: int) -> list[str]:
    """Measure gloo's all-reduce here now (2 processes x 1 thread) and cache it: the CPU predictions use it."""
    from auglocal.engine.planning.allreduce_timing import measure_and_cache

    table = measure_and_cache(2, repeats)
    lines = ["## 0. The all-reduce the CPU predictions use, measured now", "",
             f"gloo all_reduce of float32 tensors, 2 processes x 1 thread, median of {repeats} after a warm-up "
             f"(`python -m auglocal.engine.planning.allreduce_timing`; load average {os.getloadavg()[0]:.2f}).", "",
             "| bytes | ms | GB/s |", "|---:|---:|---:|"]
    lines += [f"| {b:,} | {s * 1e3:.3f} | {b / s / 1e9:.2f} |" for b, s in zip(table.nbytes, table.seconds_at,
                                                                             strict=True)]
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    from benchmarks.replicas_predict import cpu_prediction, gpu_prediction

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measured row (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the measured rows")
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 repeat, 8 GPUs only: a check it runs")
    parser.add_argument("--predict-only", action="store_true", help="skip the measured rows")
    parser.add_argument("--out", default=None, help="write the report here too")
    args = parser.parse_args(argv)
    steps, repeats = (3, 1) if args.quick else (args.steps, args.repeats)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = ["# More devices than layers: DDP BP vs AugLocal x replicas", "",
             f"Machine: {machine()}. Started {started}, load average {os.getloadavg()[0]:.2f} at the start.",
             f"Command: `python -m benchmarks.replicas {' '.join(argv if argv is not None else sys.argv[1:])}`", ""]
    lines += allreduce_table(2 if args.quick else 5)
    if not args.predict_only:
        table, info = measured(steps, repeats)
        lines += ["## 1. Measured here, side by side, global batch 128, ResNet-32", "",
                  f"{steps} timed steps per run, {repeats} interleaved repeat(s): median (min..max). Load average "
                  f"after each repeat: {', '.join(f'{v:.2f}' for v in info['loads'])}.", "", *table, ""]
    lines += cpu_prediction()
    lines += gpu_prediction(gpus=(8,) if args.quick else (8, 16, 64))
    emit(lines, args.out)


if __name__ == "__main__":
    main()

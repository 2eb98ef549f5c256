"""Peak memory of one training step: end-to-end BP vs the sequential AugLocal trainer (the paper's Table 4).

Two figures per configuration, each configuration in a fresh Python process:

- live tensors: the peak of tensor bytes alive at once during one step (`benchmarks.live_tensors`, from the
  allocator events of torch.profiler), plus the tensors alive before it (parameters, momentum buffers, the
  batch). This is the counterpart of the paper's GPU `max_memory_allocated` and does not depend on malloc.
- RSS: the process's resident peak over the warm-up and the measured step above its level once network,
  trainer and batch are built (VmHWM - VmRSS after a reset of the kernel's high-water mark,
  `echo 5 > /proc/self/clear_refs`, before the first step). It depends on the allocator, which is
  stated: glibc's default heap (`keep`, the default of every command) keeps freed blocks for reuse, so the
  process stays near the largest heap it ever needed; `return` (MALLOC_MMAP_THRESHOLD_=65536) gives them
  back to the OS.

The child builds the network, trainer and batch, runs one warm-up step (so momentum buffers exist), then one
measured step under the live-tensor tracker, reading both figures from it (the profiler's own event records
add a few MB at most to the RSS figure).

    python benchmarks/memory.py                       # ResNet-32 and ResNet-110, batch 256, d = 2..6
    python benchmarks/memory.py --models resnet32 --batch-size 64 --out benchmarks/results/memory.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys


def read_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(model_name: str, rule: str, d: int, batch_size: int, threads: int) -> dict:
    """Runs inside the fresh process: a warm-up step, then one step measured both ways; result as a dict."""
    import torch
    from auglocal.engine.auxnets import build_aux_nets
    from auglocal.engine.models import build_model
    from auglocal.engine.schedule import LRSchedule, OptimConfig
    from auglocal.engine.trainer import SequentialTrainer

    from benchmarks.live_tensors import tensor_bytes, track_live_bytes

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10)
    aux = build_aux_nets(model, rule, d=d, tau=0.5)
    trainer = SequentialTrainer(model, aux, OptimConfig(lr=0.1), LRSchedule("constant", 0.1, 1, 0))
    x = torch.randn(batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    idle = read_status_kb("VmRSS")   # built, before any step: a kept heap counts against the rule that grew it
    trainer.train_step(x, y, 0, 0)
    stage = trainer.stage
    resident = tensor_bytes(iter([*stage.modules.parameters(), *stage.modules.buffers(), x, y,
                                  *(v for st in stage.optimizer.state.values() for v in st.values()
                                    if isinstance(v, torch.Tensor))]))
    with track_live_bytes() as live:
        trainer.train_step(x, y, 0, 1)
    peak = read_status_kb("VmHWM")
    return {"model": model_name, "rule": rule, "d": d, "idle_mb": idle / 1024,
            "peak_above_idle_mb": (peak - idle) / 1024, "live_step_mb": live.peak / 2**20,
            "live_total_mb": (resident + live.peak) / 2**20}


def allocator(malloc: str) -> str:
    """The allocator of the child processes, as a reader needs it to interpret RSS."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload:
        return f"jemalloc (LD_PRELOAD={preload})"
    if malloc == "return":
        return "glibc malloc, `return` (MALLOC_MMAP_THRESHOLD_=65536: freed blocks go back to the OS)"
    return "glibc malloc, `keep` (default heap reuse, the default of every command)"


def run_fresh(model_name: str, rule: str, d: int, batch_size: int, threads: int, malloc: str) -> dict:
    env = dict(os.environ)
    if malloc == "return":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    cmd = [sys.executable, __file__, "--child", model_name, rule, str(d), str(batch_size), str(threads)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo: a benchmark figure means nothing without its machine."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def machine() -> str:
    import torch

    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, rule, d, bs, threads = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
        print(json.dumps(child(name, rule, d, bs, threads)))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet32", "resnet110"])
    p.add_argument("--depths", nargs="+", type=int, default=[2, 3, 4, 5, 6])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--malloc", choices=("keep", "return"), default="keep", help="allocator policy (default keep)")
    p.add_argument("--out", default=None, help="also write the table as Markdown to this file")
    args = p.parse_args()
    lines = [f"# Peak memory of one training step, batch {args.batch_size}, CPU, {args.threads} threads",
             "", f"Machine: {machine()}; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}.",
             f"Allocator: {allocator(args.malloc)}.",
             f"Command: `python benchmarks/memory.py --batch-size {args.batch_size} --threads {args.threads} "
             f"--malloc {args.malloc}`; each row a fresh process.", "",
             "Live tensors = the peak of tensor bytes alive at once during one step (torch.profiler allocator "
             "events), step only and with the tensors alive before it (parameters, momentum, batch): the CPU "
             "counterpart of the paper's GPU max_memory_allocated. RSS = VmHWM - VmRSS over two steps above the "
             "built process (before its first step); it depends on the allocator.", "",
             "| model | rule | d | live tensors, step (MB) | ratio to BP | live tensors, total (MB) | ratio to BP "
             "| RSS peak above built (MB) | ratio to BP |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for name in args.models:
        bp = run_fresh(name, "bp", 2, args.batch_size, args.threads, args.malloc)
        rows = [bp] + [run_fresh(name, "auglocal", d, args.batch_size, args.threads, args.malloc)
                       for d in args.depths]
        for r in rows:
            label = "-" if r["rule"] == "bp" else str(r["d"])
            cells = [f"{r[k]:.0f} | {r[k] / max(bp[k], 1e-9):.3f}"
                     for k in ("live_step_mb", "live_total_mb", "peak_above_idle_mb")]
            line = f"| {name} | {r['rule']} | {label} | " + " | ".join(cells) + " |"
            lines.append(line)
            print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Peak CPU memory of one training step: end-to-end BP vs the sequential AugLocal trainer (issue: Table 4).

Each configuration runs in a fresh Python process with glibc told to return freed activations to the OS
(MALLOC_MMAP_THRESHOLD_=65536; without it the heap keeps freed blocks and every figure is inflated).
Memory is taken from /proc: the child builds the network, trainer and batch, runs one warm-up step (so that
the optimizer's momentum buffers and allocator pools exist), resets the kernel's high-water mark
(`echo 5 > /proc/self/clear_refs`), reads VmRSS as "idle", runs one step, and reports VmHWM - idle.

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
    """Runs inside the fresh process: one measured step, result as a dict."""
    import torch

    from engine.auxnets import build_aux_nets
    from engine.models import build_model
    from engine.schedule import LRSchedule, OptimConfig
    from engine.trainer import SequentialTrainer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10)
    aux = build_aux_nets(model, rule, d=d, tau=0.5)
    trainer = SequentialTrainer(model, aux, OptimConfig(lr=0.1), LRSchedule("constant", 0.1, 1, 0))
    x = torch.randn(batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    trainer.train_step(x, y, 0, 0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    idle = read_status_kb("VmRSS")
    trainer.train_step(x, y, 0, 1)
    peak = read_status_kb("VmHWM")
    return {"model": model_name, "rule": rule, "d": d, "idle_mb": idle / 1024, "peak_above_idle_mb":
            (peak - idle) / 1024}


def run_fresh(model_name: str, rule: str, d: int, batch_size: int, threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--child", model_name, rule, str(d), str(batch_size), str(threads)]
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
    p.add_argument("--out", default=None, help="also write the table as Markdown to this file")
    args = p.parse_args()
    lines = [f"Peak memory of one training step above the idle process, batch {args.batch_size}, CPU, "
             f"{args.threads} threads, MALLOC_MMAP_THRESHOLD_=65536, each row a fresh process (VmHWM - VmRSS).",
             f"Machine: {machine()}", "",
             "| model | rule | d | peak above idle (MB) | ratio to BP |", "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in args.models:
        bp = run_fresh(name, "bp", 2, args.batch_size, args.threads)
        rows = [bp] + [run_fresh(name, "auglocal", d, args.batch_size, args.threads) for d in args.depths]
        for r in rows:
            ratio = r["peak_above_idle_mb"] / bp["peak_above_idle_mb"]
            label = "-" if r["rule"] == "bp" else str(r["d"])
            line = f"| {name} | {r['rule']} | {label} | {r['peak_above_idle_mb']:.0f} | {ratio:.3f} |"
            lines.append(line)
            print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

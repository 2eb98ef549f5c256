"""Does bf16 autocast train as well as fp32? Short sequential runs over seeds, test accuracy side by side.

ResNet-20, AugLocal d = 4 on a slice of the embedded MNIST-5k digits, the sequential trainer (the same Stage
the pipeline workers run), fp32 and bf16 for each seed, memory format auto. The question is only whether
bf16's accuracy falls within the spread that the seeds alone give fp32.

    python -m benchmarks.precision_accuracy --out benchmarks/results/kernels.md   # writes its own section
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from auglocal.engine.config import RunConfig, build_data, build_network, optim_and_schedule, resolve, validate
from auglocal.engine.precision import Kernels
from auglocal.engine.trainer import SequentialTrainer

from benchmarks.kernels import write_section
from benchmarks.memory import machine


def run(precision: str, seed: int, args: argparse.Namespace) -> tuple[float, float, float]:
    """(best test accuracy %, last test accuracy %, seconds) of one short run."""
    cfg = RunConfig(model="resnet20", rule="auglocal", d=4, dataset=args.dataset, train_size=args.train_size,
                    test_size=args.test_size, epochs=args.epochs, batch_size=args.batch_size, seed=seed,
                    precision=precision, device=args.device)
    validate(cfg)
    data = build_data(cfg)
    resolve(cfg, data)
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed, device=cfg.device,
                                kernels=Kernels.from_config(cfg))
    t0 = time.perf_counter()
    history = trainer.fit(data, cfg.epochs, cfg.batch_size)
    return history[-1].best_accuracy, history[-1].test_accuracy, time.perf_counter() - t0


def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f} ({min(values):.2f}..{max(values):.2f})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--train-size", type=int, default=256)
    p.add_argument("--test-size", type=int, default=300)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda:0")
    p.add_argument("--out", default=None, help="write the result as the accuracy section of this Markdown file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    results: dict[str, list[tuple[float, float, float]]] = {"fp32": [], "bf16": []}
    for seed in args.seeds:                         # interleaved: both precisions see the same machine load
        for precision in results:
            results[precision].append(run(precision, seed, args))
            best, last, secs = results[precision][-1]
            print(f"seed {seed} {precision}: best {best:.2f} %, last {last:.2f} %, {secs:.0f} s", flush=True)
    wall = time.perf_counter() - t0
    fp32_best = [r[0] for r in results["fp32"]]
    bf16_best = [r[0] for r in results["bf16"]]
    inside = min(fp32_best) <= statistics.mean(bf16_best) <= max(fp32_best)
    mean_gap = statistics.mean(bf16_best) - statistics.mean(fp32_best)
    cmd = (f"python -m benchmarks.precision_accuracy --dataset {args.dataset} --train-size {args.train_size} "
           f"--test-size {args.test_size} --epochs {args.epochs} --batch-size {args.batch_size} "
           f"--seeds {' '.join(map(str, args.seeds))} --threads {args.threads} --device {args.device}")
    lines = [f"## Accuracy: bf16 against fp32 (ResNet-20, AugLocal d = 4, {args.dataset}, {args.device})", "",
             f"{args.train_size} training / {args.test_size} test images, {args.epochs} epochs, batch "
             f"{args.batch_size}, seeds {args.seeds}, sequential trainer, {args.threads} thread(s), memory format "
             f"auto. Machine: {machine()}; load average {load_before[0]:.2f} at the start, "
             f"{os.getloadavg()[0]:.2f} at the end; {wall / 60:.1f} minutes. Command:", "", f"    {cmd}", "",
             "| precision | " + " | ".join(f"seed {s} best / last %" for s in args.seeds) + " | best % mean ± std "
             "(min..max) | s per run |", "|---|" + "---:|" * (len(args.seeds) + 2)]
    for precision, runs in results.items():
        cells = " | ".join(f"{b:.2f} / {la:.2f}" for b, la, _ in runs)
        lines.append(f"| {precision} | {cells} | {summary([r[0] for r in runs])} | "
                     f"{statistics.mean(r[2] for r in runs):.0f} |")
    lines += ["", f"bf16 mean best accuracy minus fp32's: {mean_gap:+.2f} points; the bf16 mean "
              f"{'lies within' if inside else 'lies OUTSIDE'} the fp32 seeds' range "
              f"{min(fp32_best):.2f}..{max(fp32_best):.2f}."]
    report = "\n".join(lines)
    print(report)
    if args.out:
        write_section(args.out, f"accuracy-{args.device}", report)


if __name__ == "__main__":
    main()

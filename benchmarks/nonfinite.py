"""What the non-finite check (engine/nonfinite.py) costs per training step.

ResNet-32, AugLocal d = 4 (tau 0.5), batch 32 of random 32x32 images (10 classes), one stage holding every
local module (the sequential trainer's), one torch thread (a CPU worker's), on this machine's device. Two
measurements, because the first alone cannot resolve 1 % on a shared machine:

1. whole steps, interleaved: train_step + loss_values() (what a worker does per step) with the check off
   (`nonfinite=None`, the old behaviour), 'stop' and 'skip', one step of each in turn, `--repeats` rounds;
   the median of each and the medians' ratio;
2. the added work alone, on the gradients of a real step: the folded losses of every module plus the one
   read-back (stop), and the buffer snapshots (skip's extra), timed `--repeats` times, against the median
   step of (1).

    python -m benchmarks.nonfinite --repeats 30            # CPU
    python -m benchmarks.nonfinite --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from auglocal.engine.auxnets import build_aux_nets
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.models import build_model
from auglocal.engine.nonfinite import BufferSnapshot, folded_loss
from auglocal.engine.schedule import LRSchedule, OptimConfig
from auglocal.engine.stage import Stage

POLICIES = (None, "stop", "skip")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(policy: str | None, device: torch.device) -> Stage:
    torch.manual_seed(0)
    model = build_model("resnet32", num_classes=10, input_size=32)
    aux = build_aux_nets(model, "auglocal", d=4, tau=0.5)
    return Stage(build_local_modules(model, aux), OptimConfig(0.01), LRSchedule("constant", 0.01, 1, 0),
                 device=device, nonfinite=policy)


def timed_step(stage: Stage, x, y, step: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    stage.train_step(x, y, step=step).loss_values()
    sync(device)
    return time.perf_counter() - t0


def added_work(stage: Stage, x, y, device: torch.device, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of the check's own work (folds + one read-back) and of skip's snapshots, on a real step's grads."""
    stage.nonfinite = None
    stage.train_step(x, y, step=0)         # leaves every module's gradients in place
    losses = [torch.tensor(1.0, device=device) for _ in stage.modules]
    check, snap = [], []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        values = [folded_loss(loss, list(m.parameters()), True) for loss, m in zip(losses, stage.modules, strict=True)]
        torch.stack(values).tolist()
        t1 = time.perf_counter()
        for m in stage.modules:
            BufferSnapshot.take(m)
        sync(device)
        t2 = time.perf_counter()
        check.append(t1 - t0)
        snap.append(t2 - t1)
    return check, snap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    stages = {policy: build(policy, device) for policy in POLICIES}
    times: dict[str | None, list[float]] = {policy: [] for policy in POLICIES}
    for r in range(args.warmup + args.repeats):
        for policy in POLICIES:               # interleaved: a change of load hits every policy alike
            t = timed_step(stages[policy], x, y, r, device)
            if r >= args.warmup:
                times[policy].append(t)
    base = statistics.median(times[None])
    print(f"ResNet-32 AugLocal d=4, batch {args.batch_size}, {len(stages[None].modules)} local modules, "
          f"{device}, 1 thread, {args.repeats} interleaved rounds")
    for policy in POLICIES:
        med = statistics.median(times[policy])
        print(f"  check {policy or 'off':4}: median step {1000 * med:8.2f} ms (min {1000 * min(times[policy]):.2f}, "
              f"max {1000 * max(times[policy]):.2f}), {100 * (med / base - 1):+.2f} % vs off")
    check, snap = added_work(build(None, device), x, y, device, args.repeats)
    c, s = statistics.median(check), statistics.median(snap)
    print(f"  added work alone: check {1e6 * c:.0f} us = {100 * c / base:.2f} % of a step; "
          f"skip's buffer snapshots {1e6 * s:.0f} us = {100 * s / base:.2f} % more")


if __name__ == "__main__":
    main()

"""Measured training time of each local module: the cost the partitioner balances when it matters most."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

#: intra-op threads the modules are timed with: one, as a pipeline worker on a CPU core runs
TIMING_THREADS = 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def module_costs_timed(modules: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int = 3,
                       warmup: int = 1) -> list[float]:
    """Seconds per batch of `x` that each local module needs for forward + loss + backward.

    The modules run in order like a Stage runs them (the output of one, detached, feeds the next), in train
    mode, on a deep copy: the caller's parameters, gradients, BatchNorm statistics and RNG state are
    untouched. Timing uses one intra-op thread, as a pipeline worker does, so the numbers compare across
    modules; the previous thread count is restored afterwards. Each module's time is the median of
    `steps` runs after `warmup` unmeasured runs.
    """
    if not modules:
        raise ValueError("no local modules to time; pass the list build_local_modules returns")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels; they must match")
    work = copy.deepcopy(nn.ModuleList(modules)).train()
    device = next((p.device for p in work.parameters()), x.device)
    x, y = x.to(device), y.to(device)
    samples: list[list[float]] = [[] for _ in work]
    threads = torch.get_num_threads()
    torch.set_num_threads(TIMING_THREADS)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for run in range(warmup + steps):
                h = x
                for i, m in enumerate(work):
                    _sync(device)
                    start = time.perf_counter()
                    out = m(h)
                    m.loss(out, y, x).backward()
                    _sync(device)
                    if run >= warmup:
                        samples[i].append(time.perf_counter() - start)
                    h = out.detach()
                work.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    return [statistics.median(s) for s in samples]

"""Measured training time of each local module: the cost the partitioner balances when it matters most."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from auglocal.engine.precision import Kernels
from torch import nn

#: intra-op threads the modules are timed with: one, as a pipeline worker on a CPU core runs
TIMING_THREADS = 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class PhaseSamples:
    """Per module: seconds of each timed run's primary forward and of the rest (loss, backward), and the bytes
    of the module's output (what a worker ending with it sends downstream)."""

    forward: list[list[float]]
    rest: list[list[float]]
    out_bytes: list[int]


def time_module_phases(modules: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int = 3,
                       warmup: int = 1, kernels: Kernels | None = None,
                       device: str | torch.device | None = None) -> PhaseSamples:
    """Time each local module's forward and the rest of its training step, `steps` runs after `warmup`.

    The modules run in order like a Stage runs them (the output of one, detached, feeds the next), in train
    mode, with the stage's kernels (`kernels`, default: what a default run uses on the modules' device): the
    same memory format (channels_last is 20-40 % faster than NCHW on CPU, so timing in another layout than the
    workers' mispredicts them by as much), autocast precision and hand-off dtype. They run on a deep copy: the
    caller's parameters, gradients, BatchNorm statistics and RNG state are untouched. Timing uses one intra-op
    thread, as a pipeline worker does, so the numbers compare across modules; the previous thread count is
    restored afterwards. `device`: where they run (default: where the modules' parameters are), e.g. the
    run's GPU while the caller's modules stay on the CPU.
    """
    if not modules:
        raise ValueError("no local modules to time; pass the list build_local_modules returns")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels; they must match")
    device = torch.device(device) if device is not None else next((p.device for m in modules for p in m.parameters()),
                                                                   x.device)
    kernels = kernels or Kernels.default(device)
    work = copy.deepcopy(nn.ModuleList(modules)).train().to(device, memory_format=kernels.torch_memory_format)
    x, y = kernels.layout(x.to(device)), y.to(device)
    samples = PhaseSamples([[] for _ in work], [[] for _ in work], [0] * len(work))
    threads = torch.get_num_threads()
    torch.set_num_threads(TIMING_THREADS)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for run in range(warmup + steps):
                h = x
                for i, m in enumerate(work):
                    h = kernels.layout(h)
                    _sync(device)
                    t0 = time.perf_counter()
                    with kernels.autocast(device):
                        out = m(h)
                        _sync(device)
                        t1 = time.perf_counter()
                        loss = m.loss(out, y, x)
                    loss.backward()
                    _sync(device)
                    t2 = time.perf_counter()
                    if run >= warmup:
                        samples.forward[i].append(t1 - t0)
                        samples.rest[i].append(t2 - t1)
                    h = kernels.handoff(out)
                    samples.out_bytes[i] = h.numel() * h.element_size()
                work.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    return samples


def module_costs_timed(modules: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int = 3,
                       warmup: int = 1, kernels: Kernels | None = None,
                       device: str | torch.device | None = None) -> list[float]:
    """Seconds per batch of `x` that each local module needs for forward + loss + backward on `device`: the
    median over `steps` runs of `time_module_phases` (which says how the modules run)."""
    s = time_module_phases(modules, x, y, steps, warmup, kernels, device)
    return [statistics.median(f + r for f, r in zip(fs, rs, strict=True)) for fs, rs in zip(s.forward, s.rest,
                                                                                           strict=True)]

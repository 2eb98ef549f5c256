"""What the partitioner balances: FLOPs, measured module times, or times measured earlier on this machine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from auglocal.engine.planning.costs import module_costs_flops
from auglocal.engine.planning.timing import TIMING_THREADS, module_costs_timed
from auglocal.engine.planning.timing_cache import CostKey, MachineKey, TimingCache
from auglocal.engine.precision import Kernels
from torch import nn

BALANCES = ("auto", "time", "flops")


@dataclass
class ModuleCosts:
    """One cost per local module, its unit ('s' per batch, or 'MAC' per image) and where it came from."""

    costs: list[float]
    unit: str
    source: str


def _flops(modules: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, why: str) -> ModuleCosts:
    return ModuleCosts(module_costs_flops(modules, x[:2], y[:2]), "MAC", f"FLOPs ({why})")


def timing_device(device: str | torch.device) -> str | None:
    """Why modules cannot be timed on `device` from this process (None: they can). A CUDA device this process
    cannot see (no CUDA here, or fewer GPUs, e.g. rank 0 planning for other nodes) cannot be timed."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return f"cannot time modules on {device}: CUDA is not available in the planning process"
    index = device.index if device.index is not None else 0
    if index >= torch.cuda.device_count():
        return f"cannot time modules on {device}: the planning process sees {torch.cuda.device_count()} GPU(s)"
    return None


def choose_module_costs(modules: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, balance: str,
                        key: CostKey, k: int, measure: bool = True,
                        cache: TimingCache | None = None, kernels: Kernels | None = None,
                        device: str | torch.device | None = None) -> ModuleCosts:
    """The costs a plan of `k` workers balances.

    - 'flops': forward + backward MACs per module (module_costs_flops); instant, but blind to what FLOPs
      miss (memory-bound BatchNorm, the aux nets' small layers, per-op overheads).
    - 'time': time every module now on a sample batch (module_costs_timed, seconds) and remember the times
      in the cache for later plans on this machine.
    - 'auto': times from the cache when this machine measured this run's modules before; otherwise measure
      them if `measure` (a training run: a good balance pays for the seconds it costs), else FLOPs (a dry
      run, which must print at once).
    With one module per worker there is nothing to balance: FLOPs, as before. `kernels`: the run's memory
    format and precision, which modules are timed in (default: a default run's on their device).
    `device`: the run's device, where the workers compute (default: where the modules are). A GPU run is timed
    on its GPU, since CPU times balance it by the wrong figures (and take long for ResNet-110); where this
    process cannot reach that GPU, 'auto' and 'time' balance by MACs and the source says why.
    """
    if balance not in BALANCES:
        raise ValueError(f"balance {balance!r}: expected one of {', '.join(BALANCES)}")
    if balance == "flops":
        return _flops(modules, x, y, "--balance flops")
    if k == len(modules):
        return _flops(modules, x, y, "one module per worker: nothing to balance")
    device = torch.device(device) if device is not None else next((p.device for m in modules for p in m.parameters()),
                                                                   x.device)
    unreachable = timing_device(device)
    if unreachable is not None:
        return _flops(modules, x, y, f"{unreachable}; balanced by MACs instead")
    cache = cache if cache is not None else TimingCache()
    machine = MachineKey.here(device, TIMING_THREADS)
    if balance == "auto":
        cached = cache.get(machine, key, len(modules))
        if cached is not None:
            return ModuleCosts(cached.costs, "s", f"module times measured on this machine on {cached.when} "
                                                  f"(cache {cache.path}; --balance time measures again)")
        if not measure:
            return _flops(modules, x, y, "no module times cached for this machine yet; --balance time "
                                         "measures them")
    costs = module_costs_timed(modules, x, y, steps=2, kernels=kernels, device=device)
    cache.put(machine, key, costs)
    return ModuleCosts(costs, "s", f"module times measured now (cached in {cache.path})")

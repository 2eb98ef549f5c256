"""Measured module times of earlier runs on this machine, kept so that a plan need not time them again."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from engine.planning.user_cache import CacheFile, cache_dir
from engine.precision import Kernels

#: bump when the meaning of a cached figure changes: older entries are then ignored
#: (2: times are taken in the run's memory format and precision, which the key now names)
FORMAT = 2
FILE_NAME = "module_times.json"


def cache_path() -> Path:
    """$XDG_CACHE_HOME/auglocal/module_times.json, by default ~/.cache/auglocal/module_times.json."""
    return cache_dir() / FILE_NAME


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform reports)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown CPU"


@dataclass(frozen=True)
class MachineKey:
    """Where the times were measured: another CPU, core count, torch build, thread count or device times
    differently, so a cached figure is only reused on the same one."""

    cpu: str
    cores: int
    torch: str
    threads: int
    device: str

    @classmethod
    def here(cls, device: str | torch.device, threads: int) -> MachineKey:
        device = torch.device(device)
        name = str(device)
        if device.type == "cuda":
            name = f"{device} ({torch.cuda.get_device_name(device)})"
        return cls(cpu_model(), os.cpu_count() or 1, torch.__version__, threads, name)


@dataclass(frozen=True)
class CostKey:
    """What decides the cost of each local module: the network, the rule and its aux nets, the input, the batch
    and the kernels (memory format, precision). (Not the data set itself, the seed or the schedule: they
    change values, not the work.)"""

    model: str
    rule: str
    d: int
    tau: float | None
    strategy: str
    convention: str | None
    input_size: int
    num_classes: int
    batch_size: int
    memory_format: str = "contiguous"
    precision: str = "fp32"

    @classmethod
    def of(cls, cfg: Any) -> CostKey:
        """The key of a resolved RunConfig (or anything with these attributes)."""
        kernels = Kernels.from_config(cfg)
        return cls(cfg.model, cfg.rule, int(cfg.d), cfg.tau, cfg.strategy, cfg.convention, int(cfg.input_size),
                   int(cfg.num_classes), int(cfg.batch_size), kernels.memory_format, kernels.precision)


@dataclass
class CachedTimes:
    """Seconds per batch of each local module, and when they were measured (Unix time)."""

    costs: list[float]
    measured_at: float

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.measured_at))


def _entry_key(machine: MachineKey, key: CostKey) -> str:
    return json.dumps({"machine": asdict(machine), "costs": asdict(key)}, sort_keys=True)


class TimingCache:
    """A JSON file of measured module times, keyed by machine and by what decides the cost.

    Losing it costs one timing run, never a wrong result beyond a worse balance (see user_cache.CacheFile).
    """

    def __init__(self, path: str | Path | None = None):
        self._file = CacheFile(FILE_NAME, FORMAT, path)
        self.path = self._file.path

    def get(self, machine: MachineKey, key: CostKey, num_modules: int) -> CachedTimes | None:
        """The cached times for this machine and run, or None (also when the module count no longer fits)."""
        entry = self._file.read().get(_entry_key(machine, key))
        try:
            costs = [float(c) for c in entry["costs"]]
            measured_at = float(entry["measured_at"])
        except (TypeError, KeyError, ValueError):
            return None
        if len(costs) != num_modules or any(not c > 0 for c in costs):
            return None
        return CachedTimes(costs, measured_at)

    def put(self, machine: MachineKey, key: CostKey, costs: list[float]) -> None:
        """Remember `costs` (seconds per batch per module); a write that fails is not an error of the run."""
        entries = self._file.read()
        entries[_entry_key(machine, key)] = {"costs": [float(c) for c in costs], "measured_at": time.time()}
        self._file.write(entries)

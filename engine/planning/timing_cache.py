"""Measured module times of earlier runs on this machine, kept so that a plan need not time them again."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from auglocal.engine.planning.user_cache import CacheFile, cache_dir
from auglocal.engine.precision import Kernels

#: bump when the meaning of a cached figure changes: older entries are then ignored
#: (2: times are taken in the run's memory format and precision, which the key now names)
FORMAT = 2
FILE_NAME = "module_times.json"
#: what a plausible cached time is, in seconds per batch of one local module: a real one lies far inside (a
#: ResNet-20 module on one CPU core at batch 128: 0.15-0.35 s; a VGG-19 ImageNet layer at batch 256 on one
#: core: about a minute); outside it the figure is refused, never balanced on ("predicted 0.0 images/s")
MIN_SECONDS, MAX_SECONDS = 1e-6, 3600.0
#: the largest ratio of two modules' times of one network a cache may claim (measured: ResNet-20 2.1x)
MAX_SPREAD = 1e4
#: measured_at must lie between this (2020-01-01) and a day from now
EARLIEST = 1577836800.0


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
        from auglocal.engine.models.imports import spec_fingerprint

        kernels = Kernels.from_config(cfg)
        code = spec_fingerprint(cfg.model)       # a user's network: its source, so that an edit measures again
        model = cfg.model if code is None else f"{cfg.model}#{code}"
        return cls(model, cfg.rule, int(cfg.d), cfg.tau, cfg.strategy, cfg.convention, int(cfg.input_size),
                   int(cfg.num_classes), int(cfg.batch_size), kernels.memory_format, kernels.precision)


@dataclass
class CachedTimes:
    """Seconds per batch of each local module, and when they were measured (Unix time)."""

    costs: list[float]
    measured_at: float

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.measured_at))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_entry(entry: Any) -> str | None:
    """Why a cached entry is not a plausible measurement (None: it is): its schema, types and ranges."""
    if not isinstance(entry, dict) or not isinstance(entry.get("costs"), list) or "measured_at" not in entry:
        return "an entry is not {costs: [...], measured_at: ...}"
    costs, when = entry["costs"], entry["measured_at"]
    if not costs or not all(_number(c) for c in costs):
        return "module times that are not finite numbers"
    if not all(MIN_SECONDS <= c <= MAX_SECONDS for c in costs):
        return f"module times outside {MIN_SECONDS:g}-{MAX_SECONDS:g} s per batch"
    if max(costs) > MAX_SPREAD * min(costs):
        return f"module times {max(costs) / min(costs):.3g}x apart (at most {MAX_SPREAD:g}x is plausible)"
    if not _number(when) or not EARLIEST <= when <= time.time() + 86400:
        return "a measuring time that is not a date from 2020 to now"
    return None


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
        """The cached times for this machine and run, or None: none cached, the module count no longer fits,
        or an entry that is not plausible (one warning line naming the file, see check_entry)."""
        entry = self._file.read().get(_entry_key(machine, key))
        if entry is None:
            return None
        why = check_entry(entry)
        if why:
            self._file.warn(why)
            return None
        if len(entry["costs"]) != num_modules:
            return None
        return CachedTimes([float(c) for c in entry["costs"]], float(entry["measured_at"]))

    def put(self, machine: MachineKey, key: CostKey, costs: list[float]) -> None:
        """Remember `costs` (seconds per batch per module); a write that fails is not an error of the run."""
        entries = self._file.read()
        entries[_entry_key(machine, key)] = {"costs": [float(c) for c in costs], "measured_at": time.time()}
        self._file.write(entries)

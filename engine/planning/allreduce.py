"""What averaging a gradient across R replicas costs, per size: a measured table (gloo on CPU) or a ring model.

A plan of R replicas must charge every stage for its all-reduce, and the crossover with data-parallel BP
turns on it, so the figure is either measured on this machine (`MeasuredAllReduce`, from
engine/planning/allreduce_timing.py, cached like the module times) or a ring model with stated, labelled
figures (`RingModel`, for GPUs: NCCL's ring moves 2(R-1)/R of the bytes through every link).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from auglocal.engine.planning.user_cache import CacheFile


def ring_factor(replicas: int) -> float:
    """The share of the bytes each member of a ring all-reduce sends (reduce-scatter + all-gather)."""
    return 2.0 * (replicas - 1) / replicas


@dataclass(frozen=True)
class RingModel:
    """alpha + 2(R-1)/R x bytes / bandwidth: NCCL's ring all-reduce on a uniform interconnect.

    `bytes_per_s` is the link (bus) bandwidth one GPU reaches in an all-reduce, not the marketing figure;
    `label` says where the figures come from (they are assumptions unless it says measured)."""

    alpha_s: float
    bytes_per_s: float
    label: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha_s) and self.alpha_s >= 0 and self.bytes_per_s > 0):
            raise ValueError(f"a ring model needs alpha >= 0 s and bandwidth > 0, got {self.alpha_s}, "
                             f"{self.bytes_per_s}")

    def seconds(self, nbytes: int, replicas: int) -> float:
        if replicas <= 1 or nbytes <= 0:
            return 0.0
        return self.alpha_s + ring_factor(replicas) * nbytes / self.bytes_per_s


@dataclass(frozen=True)
class MeasuredAllReduce:
    """All-reduce seconds measured at sizes `nbytes` among `replicas` processes, interpolated between them.

    Between two sizes the time is linear in the bytes (latency + bytes / bandwidth holds piecewise); below the
    smallest it is the smallest's (the latency floor); above the largest it grows with the last segment's
    slope. For another replica count the latency is kept and the bandwidth term follows the ring factor
    (2(R-1)/R over the measured count's): an assumption, since only `replicas` processes were measured."""

    nbytes: tuple[int, ...]
    seconds_at: tuple[float, ...]
    replicas: int = 2
    label: str = ""

    def __post_init__(self) -> None:
        if len(self.nbytes) < 2 or len(self.nbytes) != len(self.seconds_at):
            raise ValueError("a measured all-reduce needs at least two (bytes, seconds) points")
        if list(self.nbytes) != sorted(set(self.nbytes)) or self.nbytes[0] <= 0:
            raise ValueError(f"sizes must be positive and increasing, got {self.nbytes}")
        if not all(math.isfinite(s) and s > 0 for s in self.seconds_at):
            raise ValueError(f"times must be finite and > 0, got {self.seconds_at}")
        if self.replicas < 2:
            raise ValueError(f"an all-reduce is measured among >= 2 processes, got {self.replicas}")

    @property
    def slope_s_per_byte(self) -> float:
        """The last segment's seconds per byte (>= 0): the large-message bandwidth term."""
        (b0, b1), (t0, t1) = self.nbytes[-2:], self.seconds_at[-2:]
        return max((t1 - t0) / (b1 - b0), 0.0)

    def _measured_count(self, nbytes: int) -> float:
        sizes, times = self.nbytes, self.seconds_at
        if nbytes <= sizes[0]:
            return times[0]
        if nbytes >= sizes[-1]:
            return times[-1] + (nbytes - sizes[-1]) * self.slope_s_per_byte
        i = bisect.bisect_right(sizes, nbytes)
        share = (nbytes - sizes[i - 1]) / (sizes[i] - sizes[i - 1])
        return times[i - 1] + share * (times[i] - times[i - 1])

    def seconds(self, nbytes: int, replicas: int) -> float:
        if replicas <= 1 or nbytes <= 0:
            return 0.0
        extra = (ring_factor(replicas) - ring_factor(self.replicas)) * nbytes * self.slope_s_per_byte
        return max(self._measured_count(nbytes) + extra, 0.0)


#: sizes the benchmark measures: 1 KiB .. 64 MiB, x4 apart
SIZES = tuple(1024 * 4**i for i in range(9))

#: gloo all_reduce, 2 processes x 1 thread, on this project's 2-core VM, measured 2026-12-04 21:11 UTC (load
#: average 2.0: other jobs ran) with `python -m auglocal.engine.planning.allreduce_timing` (medians of 5):
#: what a CPU plan uses until this machine has measured its own (the cache, see `cpu_model_of_allreduce`)
DEFAULT_GLOO_CPU = MeasuredAllReduce(
    nbytes=SIZES,
    seconds_at=(0.256e-3, 0.245e-3, 0.247e-3, 0.258e-3, 0.834e-3, 0.763e-3, 4.09e-3, 11.9e-3, 62.1e-3),
    label="gloo, 2 processes: the project's table (measured on its 2-core VM), not measured on this machine yet")

#: ASSUMPTIONS, not measured: an H200 HGX node, 8 GPUs on NVLink 4 (900 GB/s per GPU in both directions);
#: NCCL's ring all-reduce reaches a bus bandwidth of about 350 GB/s there (its nccl-tests report ~40 % of the
#: aggregate); 20 us per call (kernel launch and the ring's steps at small sizes)
NCCL_NVLINK_H200 = RingModel(alpha_s=20e-6, bytes_per_s=350e9,
                             label="NCCL ring, H200 NVLink 4, assumed 20 us + 2(R-1)/R x bytes / 350 GB/s")
#: ASSUMPTIONS, not measured: between H200 nodes, 8 x 400 Gb/s InfiniBand per node (one NIC per GPU): a ring
#: across nodes is bounded by ~40 GB/s per GPU, 50 us per call
NCCL_INFINIBAND = RingModel(alpha_s=50e-6, bytes_per_s=40e9,
                            label="NCCL ring across nodes, 400 Gb/s InfiniBand per GPU, assumed 50 us + "
                                  "2(R-1)/R x bytes / 40 GB/s")


def gpu_model(devices: int, gpus_per_node: int = 8) -> RingModel:
    """The assumed ring of `devices` GPUs: NVLink within one node, InfiniBand (the slowest link) beyond."""
    return NCCL_NVLINK_H200 if devices <= gpus_per_node else NCCL_INFINIBAND


FORMAT = 1
FILE_NAME = "allreduce_times.json"


def _plausible(entry: object) -> MeasuredAllReduce | None:
    if not isinstance(entry, dict):
        return None
    sizes, times, when = entry.get("nbytes"), entry.get("seconds"), entry.get("measured_at")
    if not (isinstance(sizes, list) and isinstance(times, list) and isinstance(when, (int, float))):
        return None
    if not all(type(b) is int for b in sizes) or not all(isinstance(t, (int, float)) and 1e-7 < t < 60
                                                         for t in times):
        return None
    try:
        return MeasuredAllReduce(tuple(sizes), tuple(float(t) for t in times), int(entry.get("replicas", 2)),
                                 label=f"gloo, {entry.get('replicas', 2)} processes, measured on this machine "
                                       f"on {time.strftime('%Y-%m-%d %H:%M', time.localtime(when))}")
    except (TypeError, ValueError):
        return None


class AllReduceCache:
    """Measured all-reduce tables per machine and backend (a JSON file next to the module times)."""

    def __init__(self, path: str | Path | None = None):
        self._file = CacheFile(FILE_NAME, FORMAT, path)
        self.path = self._file.path

    def get(self, key: str) -> MeasuredAllReduce | None:
        entry = self._file.read().get(key)
        if entry is None:
            return None
        found = _plausible(entry)
        if found is None:
            self._file.warn("an all-reduce table that is not increasing sizes with times of 0.1 us .. 60 s")
        return found

    def put(self, key: str, nbytes: Sequence[int], seconds: Sequence[float], replicas: int) -> None:
        entries = self._file.read()
        entries[key] = {"nbytes": [int(b) for b in nbytes], "seconds": [float(s) for s in seconds],
                        "replicas": int(replicas), "measured_at": time.time()}
        self._file.write(entries)


def machine_key(backend: str = "gloo") -> str:
    """Where a table holds: the CPU, its cores, the torch build and the backend."""
    import os

    import torch
    from auglocal.engine.planning.timing_cache import cpu_model

    return f"{cpu_model()}|{os.cpu_count()}|{torch.__version__}|{backend}"


def cpu_model_of_allreduce(cache: AllReduceCache | None = None) -> MeasuredAllReduce:
    """This machine's measured gloo table if it has one, else DEFAULT_GLOO_CPU (its label says which)."""
    found = (cache or AllReduceCache()).get(machine_key("gloo"))
    return found if found is not None else DEFAULT_GLOO_CPU

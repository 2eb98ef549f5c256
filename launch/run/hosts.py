"""Which workers share a host process (thread workers) and which device each one runs on.

A *process* worker is a process of its own. *Thread* workers run as threads of a host process
(workers/runtime/host.py): a host holds consecutive workers of one device (a GPU, or the CPU), at most
`--workers-per-host` of them, so neighbours in one host pass activations by reference and only the links
between hosts (and to the coordinator) go over ZeroMQ. On a GPU, `--streams-per-gpu N` puts N thread
workers, each on its own CUDA stream, on every GPU: one host process per GPU.
"""

from __future__ import annotations

import os

from auglocal.engine.config import UsageError
from auglocal.launch.run.devices import stream_devices  # noqa: F401 - the device map lives in launch/run/devices.py

KINDS = ("process", "thread", "auto")


def resolve_kind(kind: str | None, gpus: list[str], streams_per_gpu: int, workers: int | None = None) -> str:
    """The worker kind a run of `workers` workers uses (None: not known yet, only check the flags).

    `kind` None (--worker-kind not given): thread workers when --streams-per-gpu asks for more than one per GPU
    (README's single-GPU command, `--gpus 0 --streams-per-gpu 8`: 8 stream workers in one host on cuda:0), else
    process workers. Only an explicit `--worker-kind process` with --streams-per-gpu is refused.

    `auto` picks threads where they were measured faster (benchmarks/results/threads.md, a 2-core machine):
    with more workers than CPU cores (ResNet-110 `--workers layer`: 0.11x the memory of processes and a
    faster start), and with several stream workers per GPU; with K <= cores (ResNet-32 d=4 K=2) threads were
    not faster than processes (thread/process medians 0.73..0.93 over three runs on a loaded machine), so
    processes stay there (they also keep one-worker recovery). GPU: prepared, not measured yet."""
    if kind is not None and kind not in KINDS:
        raise UsageError(f"--worker-kind {kind!r}: expected one of {', '.join(KINDS)}")
    if streams_per_gpu < 0:
        raise UsageError(f"--streams-per-gpu must be >= 0, got {streams_per_gpu}")
    if streams_per_gpu and not gpus:
        raise UsageError("--streams-per-gpu needs GPUs (--gpus); on CPU use --worker-kind thread "
                         "[--workers-per-host N]")
    if streams_per_gpu and kind == "process":
        raise UsageError("--streams-per-gpu runs thread workers (one CUDA stream each); it cannot be combined "
                         "with --worker-kind process; leave --worker-kind out or give thread")
    if kind is None:
        return "thread" if gpus and streams_per_gpu > 1 else "process"
    if kind != "auto":
        return kind
    if gpus:
        return "thread" if streams_per_gpu > 1 else "process"
    return "thread" if workers is not None and workers > (os.cpu_count() or 1) else "process"


def host_groups(devices: list[str], kind: str, per_host: int = 0) -> list[list[int]] | None:
    """Ranks of each host process: runs of consecutive workers on one device, at most `per_host` each (0: no
    limit). None for process workers (a process each)."""
    if kind == "process":
        return None
    if per_host < 0:
        raise UsageError(f"--workers-per-host must be >= 0, got {per_host}")
    hosts: list[list[int]] = []
    for r, device in enumerate(devices):
        last = hosts[-1] if hosts else None
        if last and devices[last[-1]] == device and (per_host == 0 or len(last) < per_host):
            last.append(r)
        else:
            hosts.append([r])
    return hosts


def describe_hosts(hosts: list[list[int]] | None, devices: list[str]) -> str:
    """One line for the plan printout: which workers share which host process."""
    if hosts is None:
        return "worker kind: process (one process per worker)"
    parts = [f"host {h}: workers {g[0]}..{g[-1]} on {devices[g[0]]}" if len(g) > 1
             else f"host {h}: worker {g[0]} on {devices[g[0]]}" for h, g in enumerate(hosts)]
    return f"worker kind: thread ({len(hosts)} host process(es); {'; '.join(parts)})"


def gpu_sharing(devices: list[str]) -> list[list[int]]:
    """Groups of workers that share one GPU (more than one worker on it): the planner bounds their
    throughput by the sum of their work (CPU workers on shared cores are time-sliced instead)."""
    by_device: dict[str, list[int]] = {}
    for r, device in enumerate(devices):
        if device.startswith("cuda"):
            by_device.setdefault(device, []).append(r)
    return [ranks for ranks in by_device.values() if len(ranks) > 1]

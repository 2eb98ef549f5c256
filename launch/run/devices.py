"""The one device map: which device each pipeline worker runs on, on one host and under torchrun.

On one host the coordinator plans every worker's device (`one_host_devices`). Under torchrun each worker rank
picks its GPU on its own node (`torchrun_gpu`), because only it knows how many GPUs its node has. torchrun numbers
the ranks node by node (node 0 holds ranks 0..n0-1, node 1 the next n1, ...), so global rank 0, the
coordinator, is local rank 0 of its node, and a rank is on the coordinator's node exactly when
`rank - local_rank == 0`. The coordinator feeds batches from the CPU and holds no GPU: on its node the workers
start at GPU 0 (local rank 1 -> cuda:0), elsewhere local rank l -> cuda:l. Asking for it
(AUGLOCAL_COORDINATOR_GPU=1 in torchrun's environment on the coordinator's node) keeps GPU 0 there for rank 0,
and the workers of that node start at GPU 1. A node with more worker ranks than GPUs shares them round-robin,
as one host does with more workers than --gpus.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from auglocal.engine.config import UsageError

COORDINATOR_GPU_VAR = "AUGLOCAL_COORDINATOR_GPU"


def parse_gpus(spec: str | None) -> list[str]:
    """'0-3,6' -> ['cuda:0', ..., 'cuda:3', 'cuda:6']; 'cpu' or None -> [] (CPU workers)."""
    if spec is None or spec.strip().lower() == "cpu":
        return []
    ids: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                ids.extend(range(lo, hi + 1))
            else:
                ids.append(int(part))
        except ValueError:
            raise UsageError(f"--gpus {spec!r}: expected 'cpu' or GPU ids like 0-3,6") from None
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [i for i in ids if i >= available]
    if missing:
        raise UsageError(f"--gpus {spec!r}: GPU(s) {missing} not available ({available} CUDA device(s) visible); "
                         "use --gpus cpu to run on CPU cores")
    return [f"cuda:{i}" for i in ids]


def stream_devices(k: int, gpus: list[str], streams_per_gpu: int) -> list[str]:
    """Worker r on gpus[r // streams_per_gpu]: consecutive workers share a GPU (and its host process)."""
    if streams_per_gpu * len(gpus) < k:
        raise UsageError(f"{k} workers do not fit on {len(gpus)} GPU(s) with --streams-per-gpu {streams_per_gpu}")
    return [gpus[r // streams_per_gpu] for r in range(k)]


def one_host_devices(k: int, gpus: list[str], streams_per_gpu: int = 0) -> list[str]:
    """The devices of `k` workers on one host: CPU without GPUs; with --streams-per-gpu N, N consecutive workers
    per GPU; else worker r on gpus[r % len(gpus)]."""
    if not gpus:
        return ["cpu"] * k
    if streams_per_gpu:
        return stream_devices(k, gpus, streams_per_gpu)
    return [gpus[r % len(gpus)] for r in range(k)]


def coordinator_gpu_asked(environ: Mapping[str, str] = os.environ) -> bool:
    """AUGLOCAL_COORDINATOR_GPU=1: rank 0 keeps GPU 0 of its node (see the module docstring)."""
    return environ.get(COORDINATOR_GPU_VAR) == "1"


def torchrun_gpu(rank: int, local_rank: int, gpu_count: int, coordinator_gpu: bool = False) -> int | None:
    """The GPU index on its node of global rank `rank` (local rank `local_rank`) on a node with `gpu_count`
    GPUs; None for the coordinator (rank 0) unless `coordinator_gpu`."""
    if gpu_count < 1:
        raise ValueError(f"rank {rank} runs a GPU worker, but its node has no CUDA device")
    if not 0 <= local_rank <= rank:
        raise ValueError(f"rank {rank} cannot have local rank {local_rank}: torchrun numbers ranks node by node")
    if rank == 0:
        return 0 if coordinator_gpu else None
    on_coordinators_node = rank - local_rank == 0
    slot = local_rank - 1 if on_coordinators_node and not coordinator_gpu else local_rank
    return slot % gpu_count


def torchrun_device(rank: int, local_rank: int, gpu_count: int, coordinator_gpu: bool = False) -> str:
    """`torchrun_gpu` as a device name: 'cuda:i', or 'cpu' for a coordinator that holds no GPU."""
    gpu = torchrun_gpu(rank, local_rank, gpu_count, coordinator_gpu)
    return "cpu" if gpu is None else f"cuda:{gpu}"


def torchrun_map(procs_per_node: list[int], gpus_per_node: list[int],
                 coordinator_gpu: bool = False) -> list[tuple[int, str]]:
    """(node, device) of every global rank of a torchrun group whose node n starts `procs_per_node[n]` processes
    and has `gpus_per_node[n]` GPUs; node 0 holds rank 0. What every rank computes for itself, for one view."""
    placed: list[tuple[int, str]] = []
    for node, (procs, gpus) in enumerate(zip(procs_per_node, gpus_per_node, strict=True)):
        first = len(placed)
        placed.extend((node, torchrun_device(first + local, local, gpus, coordinator_gpu)) for local in range(procs))
    return placed

"""The two reducers of engine/replicas.py's interface: threads of one host process, and torch.distributed.

Only the R replicas of one stage talk to each other, so each stage has a group of its own and no stage ever
waits for another stage's reduction. Which one a replica gets is decided by the coordinator (`ReplicaInfo.kind`):
`thread` when every replica of the stage is a thread of the same host process, else `gloo` (CPU) or `nccl` (GPU)
over a per-stage FileStore in the attempt's private folder (one host), or over rank 0's store (torchrun).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta

import torch
from auglocal.engine.replicas import Done

REDUCER_KINDS = ("thread", "gloo", "nccl")
#: a group named so rendezvouses in the store given to `use_store` (rank 0's, under torchrun), not in a FileStore
STORE_PREFIX = "store:"
_SHARED: dict[str, object] = {}


def use_store(store) -> None:
    """The torch.distributed Store that groups named STORE_PREFIX... rendezvous in (a torchrun worker's)."""
    _SHARED["store"] = store


@dataclass
class ReplicaInfo:
    """What a worker knows of its replicas (WorkerSpec.replica): plain data, handed to the worker at start."""

    index: int            # this worker's replica, 0..count-1 (replica 0 writes the layer files)
    count: int            # R
    stage: int            # which stage of the K-worker pipeline, 0..K-1
    kind: str             # 'thread', 'gloo' or 'nccl'
    group: str            # the stage group's name: a FileStore path (gloo, nccl) or an in-process key (thread)
    timeout_s: float = 300.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _ThreadGroup:
    """The shared end of one stage's thread replicas: a barrier, one slot per replica, one sum."""

    def __init__(self, count: int, timeout_s: float):
        self.slots: list[torch.Tensor | None] = [None] * count
        self.barrier = threading.Barrier(count, timeout=timeout_s)
        self.result: torch.Tensor | None = None

    def _sync(self, t: torch.Tensor) -> None:
        if t.is_cuda:      # each thread worker computes on its own stream: make its writes visible first
            torch.cuda.current_stream(t.device).synchronize()

    def sum(self, replica: int, flat: torch.Tensor) -> None:
        self._sync(flat)
        self.slots[replica] = flat
        self.barrier.wait()
        if replica == 0:                      # one thread adds, in replica order: the oracle's order
            total = self.slots[0].clone()
            for other in self.slots[1:]:
                total.add_(other.to(total.device))
            self._sync(total)
            self.result = total
        self.barrier.wait()
        flat.copy_(self.result.to(flat.device))
        self._sync(flat)
        self.barrier.wait()                  # nobody reuses the slots before every replica has copied

    def broadcast(self, replica: int, flat: torch.Tensor) -> None:
        self._sync(flat)
        if replica == 0:
            self.slots[0] = flat
        self.barrier.wait()
        if replica != 0:
            flat.copy_(self.slots[0].to(flat.device))
            self._sync(flat)
        self.barrier.wait()


_GROUPS: dict[str, _ThreadGroup] = {}
_GROUPS_LOCK = threading.Lock()


class ThreadReducer:
    """Replicas that are threads of one process: a barrier and a sum in replica order (bitwise the oracle's)."""

    def __init__(self, info: ReplicaInfo):
        self.replica, self.replicas = info.index, info.count
        with _GROUPS_LOCK:
            self.group = _GROUPS.setdefault(info.group, _ThreadGroup(info.count, info.timeout_s))

    def sum(self, flat: torch.Tensor) -> Done:
        self.group.sum(self.replica, flat)
        return Done()

    def broadcast(self, flat: torch.Tensor) -> Done:
        self.group.broadcast(self.replica, flat)
        return Done()


class DistReducer:
    """Replicas in separate processes: one torch.distributed process group per stage (gloo on CPU, NCCL on
    GPU), made on first use from a FileStore, so a worker reports ready without waiting for its peers."""

    def __init__(self, info: ReplicaInfo):
        self.info = info
        self.replica, self.replicas = info.index, info.count
        self._pg = None

    def _group(self):
        if self._pg is None:
            import torch.distributed as dist

            if self.info.group.startswith(STORE_PREFIX):
                if "store" not in _SHARED:
                    raise RuntimeError(f"replica group {self.info.group!r} needs a shared store (use_store)")
                store = dist.PrefixStore(f"replicas/{self.info.group}", _SHARED["store"])
            else:
                store = dist.FileStore(self.info.group, self.info.count)
            timeout = timedelta(seconds=self.info.timeout_s)
            if self.info.kind == "nccl":
                self._pg = dist.ProcessGroupNCCL(store, self.info.index, self.info.count, timeout=timeout)
            else:
                self._pg = dist.ProcessGroupGloo(store, self.info.index, self.info.count, timeout)
        return self._pg

    def sum(self, flat: torch.Tensor):
        return self._group().allreduce([flat])

    def broadcast(self, flat: torch.Tensor):
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self._group().broadcast([flat], opts)


def make_reducer(info: ReplicaInfo | dict | None):
    """The reducer a replica's stage uses; None for a run without replicas."""
    if info is None:
        return None
    if isinstance(info, dict):
        info = ReplicaInfo(**info)
    if info.count <= 1:
        return None
    if info.kind not in REDUCER_KINDS:
        raise ValueError(f"unknown reducer kind {info.kind!r}; expected one of {', '.join(REDUCER_KINDS)}")
    return ThreadReducer(info) if info.kind == "thread" else DistReducer(info)

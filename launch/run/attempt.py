"""One attempt of a pipeline run, as data: where its workers go (`Placement`), what it is asked to do
(`AttemptOptions`), what it counted (`RunCounters`), and how it ends when a worker fails (`WorkerFailed`).

Apart from the coordinator (coordinator.py) so recovery, the pipeline's attempt loop and the tests can speak of
an attempt without importing the loop that runs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from auglocal.workers.runtime.faults import Fault


class WorkerFailed(RuntimeError):
    """A worker process died, hung or could not go on; the text names it and its layers.

    `restartable` is False when a new attempt would fail the same way (a full disk): the run stops."""

    def __init__(self, rank: int | None, layers: list[int], what: str, restartable: bool = True):
        self.rank, self.layers, self.what, self.restartable = rank, layers, what, restartable
        self.fallback: str | None = None         # why one-worker recovery did not apply (launch/run/recovery.py)
        self.divergence = None                   # auglocal.launch.run.divergence.Divergence when a loss went non-finite
        self.detected_at = time.perf_counter()   # recovery time counts from here, stopping the workers included
        who = f"worker {rank} (layers {layers[0]}..{layers[-1]})" if rank is not None else "a process of this run"
        super().__init__(f"{who} {what}")


@dataclass
class Placement:
    """Which local modules each worker runs, where, with how many threads, and the shape of its input."""

    groups: list[list[int]]
    layer_ids: list[list[int]]
    devices: list[str]
    threads: list[int]
    input_shapes: list[tuple[int, ...]] | None = None   # per worker: one input activation's shape (no batch)
    hosts: list[list[int]] | None = None                # thread workers: the ranks of each host process
    replicas: int = 1                                   # --replicas R: R copies of the pipeline, rank r * K + k

    @property
    def stages(self) -> int:
        """K, the workers of one pipeline (all of them without replicas)."""
        return len(self.groups) // self.replicas


@dataclass
class AttemptOptions:
    """Knobs of the runtime that do not change what is computed."""

    window: int = 2
    trace_dir: str | None = None
    checkpoint_every: int = 0            # steps between checkpoints; 0 = only at epoch ends
    heartbeat_timeout: float = 120.0     # seconds without any message from a worker that is not waiting = hung
    fault: Fault | None = None
    resume_dir: str | None = None        # committed checkpoint folder the workers load
    malloc: str = "keep"                 # worker allocator policy, see WorkerSpec.malloc
    recovery: str = "all"                # 'one': restart only a failed worker where possible (launch/run/recovery.py)
    replay_log_mb: float = 256.0         # memory bound of each worker's replay log; past it, it spills to files
    spill_dir: str | None = None         # where replay logs spill (None: the attempt's private temp folder)
    transport: str = "ipc"               # links: 'ipc' sockets in the attempt's folder or loopback 'tcp' ports
    spares: int = 1                      # warm spare processes for one-worker recovery (--recovery one only)
    cuda_graphs: bool = False            # workers capture and replay their train step (engine/graphed_step.py)


@dataclass
class RunCounters:
    """What the whole run counts across attempts (the attempt loop owns it, attempts add to it)."""

    rejected: int = 0                    # strangers' messages dropped, by the workers and by the coordinator

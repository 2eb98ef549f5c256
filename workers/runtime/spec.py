"""What a worker is told when it starts (`WorkerSpec`), its name, the errors that end it, and the stage it builds.

Plain data and one builder, apart from the loop (worker.py), so the coordinator, the thread host and the
elastic ranks can make and read specs without importing the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from auglocal.workers.links.link import Link
from auglocal.workers.wire.protocol import InboxSchema

POLL_MS = 1000          # longest single wait before a blocked worker checks that its coordinator is still alive
HEARTBEAT_S = 1.0       # a waiting worker reports at least this often
CONTROL_POLL_MS = 100   # with a control inbox, the longest wait before a worker looks at it
REPLAY_LOG_BYTES = 256 << 20


@dataclass
class WorkerSpec:
    """Everything a worker needs, as plain data handed to the new process (never sent over the wire)."""

    rank: int
    modules: list[int]            # indices into the run's list of local modules
    config: dict                  # auglocal.engine.config.RunConfig.to_dict(), fully resolved
    inbox: Link                   # this worker binds it; activations (or the coordinator's batches) arrive
    outbox: Link | None           # the next worker's inbox; None for the last worker
    results: Link                 # the coordinator's inbox for metrics and acknowledgements
    run_id: str
    secret: str
    out_dir: str                  # per-layer files of the final state go to out_dir/layers/
    coordinator_pid: int
    schema: InboxSchema | None = None   # what this worker's inbox accepts (shapes of its input)
    threads: int = 1
    device: str = "cpu"
    send_input: bool = False      # forward the network input x downstream (a later stage needs it)
    trace_path: str | None = None
    data_stats: dict = field(default_factory=dict)   # {"mean": [...], "std": [...]} for InfoPro
    resume_dir: str | None = None  # a committed checkpoint folder to start from (per-layer files)
    fault: dict | None = None     # auglocal.workers.runtime.faults.Fault as a dict, for this worker only
    heartbeat_s: float = HEARTBEAT_S
    malloc: str = "keep"          # 'return': freed activations go back to the OS (less memory, ~2x slower on
                                  # CPU from page faults); 'keep': glibc's default heap reuse (fastest)
    control: Link | None = None   # this worker binds it: the coordinator's control messages (relink, commits)
    incarnation: int = 0          # 0 for a worker of a new attempt, n for the n-th one-worker restart of rank
    resume_seq: int = -1          # seq of the last message the resumed state has handled (its checkpoint's)
    replay_log_bytes: int = REPLAY_LOG_BYTES   # memory bound of the replay log; more spills to files
    spill_dir: str | None = None  # where the replay log spills (None: the system's temporary folder)
    ship_layers: bool = False     # send layer files to the coordinator over the results link instead of writing
                                  # them into its folders (several machines: workers/runtime/layer_shipping.py)
    curve: object | None = None   # this worker's CurveKeyPair when its links are curve links (one-host launcher)
    admit: tuple = ()             # public keys its CURVE receivers admit (the run's other processes)
    replay_log: bool = True       # False for thread workers: their failure restarts the whole pipeline, which
                                  # never replays, so keeping (encoding) every sent message would be waste
    hold_after_stop: bool = False  # after reporting stopped, keep process, links and replay log until the
                                   # coordinator's RELEASE: a neighbour failing in the run's tail can still be
                                   # recovered alone (launch/run/recovery.py)
    cuda_graphs: bool = False     # capture the train step as CUDA graphs and replay it (engine/graphed_step.py)
    replica: dict | None = None   # --replicas > 1: workers/runtime/grad_reducer.py ReplicaInfo as a dict

    @property
    def name(self) -> str:
        return worker_name(self.rank, self.incarnation)

    @property
    def is_first(self) -> bool:
        """The first worker of its pipeline (of its replica's, with --replicas): its input is the image."""
        return (self.replica["stage"] if self.replica else self.rank) == 0

    @property
    def writes_layers(self) -> bool:
        """Replicas are identical after every step, so replica 0 alone writes checkpoints and final layers."""
        return self.replica is None or self.replica["index"] == 0


def worker_name(rank: int, incarnation: int = 0) -> str:
    """The sender name of worker `rank` on the wire (the coordinator maps it back to the rank); a restarted
    worker's name carries its incarnation, so reports the old process left behind are told apart."""
    return f"worker{rank}" if incarnation == 0 else f"worker{rank}.{incarnation}"


class CoordinatorGone(RuntimeError):
    """The coordinator died: a worker must not linger as an orphan."""


class WorkerError(RuntimeError):
    """This worker cannot go on (a malformed message from its own pipeline, a minibatch seen twice, I/O)."""


@dataclass
class _Stats:
    """The data set's channel statistics, as the stage's normalisation reads them."""

    mean: list
    std: list


def build_modules(config: dict, data_stats: dict) -> list:
    """Every local module of the run's network, rebuilt from its config (same seed, so the same initial weights).

    Apart from `build_stage` so a warm spare (workers/runtime/spare.py) can build them before it knows its rank."""
    from auglocal.engine.config import RunConfig, build_network
    from auglocal.engine.local_module import build_local_modules

    stats = _Stats(**data_stats) if data_stats else None
    model, aux = build_network(RunConfig.from_dict(config), stats)
    return build_local_modules(model, aux)


def build_stage(spec: WorkerSpec, modules: list | None = None):
    """The worker's slice of the run's network as a stage; `modules` are the run's local modules if already built
    (from this spec's config and data statistics), else they are built here."""
    from auglocal.engine.config import RunConfig, optim_and_schedule
    from auglocal.engine.precision import Kernels
    from auglocal.engine.stage import Stage

    cfg = RunConfig.from_dict(spec.config)
    if modules is None:
        modules = build_modules(spec.config, spec.data_stats)
    optim, schedule = optim_and_schedule(cfg)
    mine = [modules[i] for i in spec.modules]
    stage = Stage(mine, optim, schedule, seed=cfg.seed, device=spec.device, kernels=Kernels.from_config(cfg),
                  nonfinite=cfg.nonfinite)
    if spec.replica is not None:
        from auglocal.workers.runtime.grad_reducer import make_reducer

        stage.reducer, stage.shard = make_reducer(spec.replica), spec.replica["index"]
    if spec.cuda_graphs:
        from auglocal.engine.graphed_step import GraphedStep

        GraphedStep.install(stage, say=lambda line: print(f"auglocal-launch: {spec.name}: {line}", flush=True))
    return stage

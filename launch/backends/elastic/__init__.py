"""Runs across machines under torchrun: `python -m auglocal.launch.backends.elastic FLAGS` (or `auglocal-launch
--elastic FLAGS`).

One torchrun per node starts this module once per process; global rank 0 is the coordinator and ranks 1..K
are the K workers of the partition (so WORLD_SIZE = K + 1). Two nodes, 1 + 2 workers (docs/several-machines.md,
for example):

    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    # node A (10.0.0.1)
    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint 10.0.0.1:29400 \\
        --local-addr 10.0.0.1 --max-restarts 3 -m auglocal.launch.backends.elastic -- --node-addr 10.0.0.1 \\
        --secret-file ~/.auglocal-secret --out runs/r20 --model resnet20 --checkpoint-every 50
    # node B (10.0.0.2): the same, with --local-addr 10.0.0.2 --node-addr 10.0.0.2

Rank 0 hosts the store where the ranks meet (launch/backends/elastic/store.py), writes the run folder and receives the
workers' layer files over the links; no shared filesystem is needed. Any rank dying ends the attempt: torchrun
restarts the whole group, and the new rank 0 resumes from the last committed checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

from auglocal.engine.config import RunConfig, UsageError
from auglocal.launch.backends.elastic.store import (
    NODE_ADDR_VAR,
    SHARE_STORE_VAR,
    STORE_PORT_VAR,
    RunStore,
    TorchrunEnv,
    read_secret,
)
from auglocal.launch.backends.registry import BY_NAME, ELASTIC
from auglocal.launch.run.run_dir import resumable
from auglocal.launch.run.transport_choice import elastic_transport
from auglocal.workers.wire.endpoint_record import EndpointRecordError

STORE_TIMEOUT_S = 300.0


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of runs under torchrun (auglocal-launch's parser has them; see docs/several-machines.md)."""
    g = parser.add_argument_group("several machines (under torchrun; docs/several-machines.md)")
    g.add_argument("--elastic", action="store_true",
                   help="run as one rank of a torchrun group: rank 0 coordinates, ranks 1..K are the K workers "
                        "(python -m auglocal.launch.backends.elastic sets it)")
    g.add_argument("--node-addr", default=None,
                   help=f"this node's address that the other nodes reach (the same as torchrun's --local-addr); "
                        f"the ranks here bind their inboxes on it (default ${NODE_ADDR_VAR}; rank 0: MASTER_ADDR)")
    g.add_argument("--store-port", type=int, default=None,
                   help=f"port of the store rank 0 hosts on its node (default ${STORE_PORT_VAR}, else torchrun's "
                        f"MASTER_PORT, which needs {SHARE_STORE_VAR}=1)")
    g.add_argument("--secret-file", default=None,
                   help="file (mode 0600) holding the run secret, copied to every node out of band "
                        "(default: $AUGLOCAL_SECRET); never give the secret itself as a flag")


class ElasticRank:
    """This process's place in the torchrun group: its environment, the run secret and rank 0's store."""

    def __init__(self, env: TorchrunEnv, secret: str, node_addr: str, store: RunStore):
        self.env, self.secret, self.node_addr, self.store = env, secret, node_addr, store
        self.restarts = env.restart_count    # rank 0: the group's restarts so far (see group_restarts)
        #: rank 0: what it is waiting for from the other ranks, if anything; named when it is stopped meanwhile
        #: (torchrun stops rank 0 with SIGTERM when a rank of another node exits, without saying why)
        self.waiting: str | None = None

    @property
    def is_coordinator(self) -> bool:
        return self.env.rank == 0

    @classmethod
    def join(cls, args: argparse.Namespace, environ=os.environ) -> ElasticRank:
        """Check the flags and torchrun's environment, then host (rank 0) or reach (the others) the store."""
        if args.sequential or args.dry_run:
            raise UsageError("--elastic runs the pipeline under torchrun; it does not combine with --sequential or "
                             "--dry-run")
        if args.trace:
            raise UsageError("--trace is not available with --elastic yet (trace files would stay on each node)")
        if not (args.out or args.resume):
            raise UsageError("--elastic needs --out RUN_DIR: every attempt of the run (torchrun restarts) must "
                             "find the same run folder on rank 0's node")
        try:
            elastic_transport(args.transport)
        except ValueError as err:
            raise UsageError(str(err)) from None
        env = TorchrunEnv.from_environ(environ)
        if env.world_size < 2:
            raise UsageError(f"--elastic needs WORLD_SIZE >= 2 (a coordinator and a worker), got {env.world_size}")
        secret = read_secret(args.secret_file, environ)
        port = args.store_port or int(environ.get(STORE_PORT_VAR, 0)) or None
        if port is None:
            if environ.get(SHARE_STORE_VAR) != "1":
                raise UsageError(f"set {SHARE_STORE_VAR}=1 in torchrun's environment (rank 0 hosts its own store "
                                 "at MASTER_PORT), or name a free port with --store-port")
            port = env.master_port
        node_addr = args.node_addr or environ.get(NODE_ADDR_VAR) or (env.master_addr if env.rank == 0 else None)
        if not node_addr:
            raise UsageError(f"rank {env.rank} needs --node-addr (or ${NODE_ADDR_VAR}): this node's address that the "
                             "other nodes reach, as given to torchrun's --local-addr")
        if env.rank == 0:
            store = RunStore.host(port, secret, env.restart_count, STORE_TIMEOUT_S)
        else:
            try:
                store = RunStore.connect(env.master_addr, port, secret, STORE_TIMEOUT_S)
            except EndpointRecordError as err:
                raise UsageError(f"rank {env.rank}: rank 0's attempt record {err}: this node's run secret differs "
                                 "from rank 0's (copy the same --secret-file to every node)") from None
            store.put(f"restarts/{env.rank}", str(env.restart_count).encode())
        return cls(env, secret, node_addr, store)

    def group_restarts(self) -> int:
        """Rank 0: how often torchrun has restarted the group. TORCHELASTIC_RESTART_COUNT counts per node (a
        node restarted because another node failed does not count it), so every rank publishes its own and
        the largest is the group's."""
        counts = [self.env.restart_count]
        for r in range(1, self.env.world_size):
            self.waiting = (f"waiting for rank {r} to join rank 0's store (it never did: a rank whose run secret "
                            "differs refuses rank 0's record and exits 2, saying so on its own node; copy the same "
                            "--secret-file to every node)")
            try:
                counts.append(int(self.store.get(f"restarts/{r}")))
            except TimeoutError:
                raise UsageError(f"rank 0: rank {r} never joined rank 0's store within {self.store.timeout_s:.0f} s "
                                 "(a rank whose run secret differs refuses rank 0's record and exits 2 on its own "
                                 "node; copy the same --secret-file to every node)") from None
        self.waiting = None
        return max(counts)

    def continue_after_restart(self, args: argparse.Namespace) -> None:
        """Rank 0 of a restarted group continues the run folder the failed attempt left (as --resume); the
        first attempt's --overwrite never clears it again."""
        self.restarts = self.group_restarts()
        if self.restarts > 0 and not args.resume and resumable(args.out, args.sequential):
            args.resume, args.overwrite = args.out, False
            print(f"auglocal-launch: torchrun restart {self.restarts}: continuing {args.out} from its last "
                  "committed checkpoint")

    def serve(self) -> int:
        """A worker rank: the process's exit code."""
        from auglocal.launch.backends.elastic.worker import run_worker

        try:
            return run_worker(self.env, self.store, self.node_addr)
        except KeyboardInterrupt:
            return 143


def train_elastic(rank: ElasticRank, cfg: RunConfig, data, opts, out: str, progress: bool, resume: bool) -> int:
    """Rank 0: one attempt of the pipelined run with the other ranks as its workers; 0 done, 1 failed (torchrun
    then restarts the group, and the next rank 0 resumes from the last committed checkpoint)."""
    from auglocal.launch.run.devices import coordinator_gpu_asked
    from auglocal.launch.run.pipeline import (
        coordinator_threads,
        prepare_run,
        report_failure,
        report_success,
        run_attempts,
    )
    from auglocal.workers.runtime.process_setup import select_device

    if coordinator_gpu_asked():
        select_device("cuda:0")                      # rank 0 keeps GPU 0 of its node (launch/run/devices.py)
    k, replicas = rank.env.world_size - 1, opts.replicas
    if k % replicas:
        raise UsageError(f"--replicas {replicas}: this torchrun group has {k} worker rank(s) (WORLD_SIZE - 1), not a "
                         f"multiple of {replicas}")
    k //= replicas                                   # workers of one pipeline; R x K ranks in all
    if opts.workers == "auto":
        opts.workers = str(k)
    elif opts.workers != str(k):
        raise UsageError(f"--workers {opts.workers}: this torchrun group has {k * replicas} worker rank(s) "
                         f"(WORLD_SIZE - 1) for {replicas} replica(s); give --workers {k} or leave it auto")
    opts.recovery, opts.max_restarts = "all", 0      # restarts are torchrun's (--max-restarts)
    if rank.restarts > 0 and opts.fault is not None and not opts.fault.always:
        opts.fault = None                            # a fault fires in the first attempt only
    # The base Coordinator's own link table is unused here (each rank binds its own inbox): keep it plain tcp,
    # and let the elastic backend's coordinator wire the asked transport per pair (launch/backends/elastic/links.py).
    transport, opts.transport = opts.transport, "tcp"
    prepared = prepare_run(cfg, data, opts, out, progress, resume)
    prepared.backend = BY_NAME[ELASTIC]
    prepared.backend_options = dict(run_store=rank.store, node_addr=rank.node_addr, transport=transport)
    with coordinator_threads(prepared.placement.devices):   # some worker ranks may share this host's cores
        outcome = run_attempts(prepared)
    if outcome.error is not None:
        print("auglocal-launch: this attempt failed; torchrun restarts the group while --max-restarts allows, and "
              "rank 0 then resumes from the last committed checkpoint", file=sys.stderr)
        return report_failure(prepared, outcome)
    return report_success(prepared, outcome)

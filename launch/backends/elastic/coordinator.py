"""Rank 0's coordinator under torchrun: the workers are other ranks, on this machine or others.

It differs from the one-host `Coordinator` only in how an attempt starts and what a worker handle is. Instead of
spawning processes it publishes its CURVE key, reads the workers' verified keys and node addresses, decides each
link's transport (launch/backends/elastic/links.py), binds its results inbox on a routable address admitting exactly the
workers' keys, publishes each worker's spec (sealed, in rank 0's store: launch/backends/elastic/store.py) with the
transports and the checkpoint files that worker resumes from, makes the process group if a gloo or nccl link
needs one, and connects to worker 0's inbox once that worker has published it. Workers ship their layer files
over the results link (workers/runtime/layer_shipping.py), so rank 0 writes the run folder in today's format. A worker's
death is torchrun's to see: its agent ends the whole group and starts the next attempt; the heartbeat timeout is
the backstop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from auglocal.launch.backends.elastic.links import (
    LinkPlan,
    bind_inbox,
    connect,
    destroy_group,
    init_group,
    peer_key,
    publish_inbox,
    publish_key,
)
from auglocal.launch.run.coordinator import READY_TIMEOUT_S, Coordinator
from auglocal.launch.run.replicas import ShardedFeed, store_replica
from auglocal.workers.links.link import Link
from auglocal.workers.runtime.layer_files import head_file, layer_file
from auglocal.workers.runtime.worker import WorkerSpec
from auglocal.workers.wire.endpoint_record import EndpointRecordError
from auglocal.workers.wire.frame_bounds import results_bound
from auglocal.workers.wire.messages import Codec, TensorSpec
from auglocal.workers.wire.protocol import InboxSchema
from auglocal.workers.wire.sealed import codec_secret

RESULTS_WINDOW = 64
#: spec fields that only make sense on rank 0's machine: each worker fills them in itself
_LOCAL_FIELDS = {"inbox": None, "outbox": None, "results": None, "control": None, "secret": "", "coordinator_pid": 0,
                 "resume_dir": None, "trace_path": None, "spill_dir": None, "curve": None, "admit": ()}


@dataclass
class PublishedSpec:
    """What rank 0 publishes for one worker: its spec without the machine-local fields, its link window,
    whether it is the last worker, the files it resumes from (name -> SHA-256) and the attempt's LinkPlan."""

    spec: WorkerSpec
    window: int
    last: bool
    resume_files: dict[str, str]
    plan: LinkPlan


def spec_to_wire(spec: WorkerSpec, resume_files: dict[str, str], plan: LinkPlan) -> bytes:
    """A worker's spec as JSON (see PublishedSpec)."""
    plain = dataclasses.asdict(dataclasses.replace(spec, **_LOCAL_FIELDS))
    return json.dumps({"spec": plain, "window": spec.inbox.window, "last": spec.outbox is None,
                       "resume_files": resume_files, "plan": plan.to_wire()}).encode()


def spec_from_wire(payload: bytes) -> PublishedSpec:
    """Inverse of spec_to_wire (the payload was verified against the run secret before)."""
    raw = json.loads(payload)
    fields = dict(raw["spec"])
    if fields.get("schema") is not None:
        fields["schema"] = InboxSchema(**{role: TensorSpec(s["dtype"], tuple(s["shape"]))
                                          for role, s in fields["schema"].items()})
    fields["admit"] = tuple(fields["admit"])
    return PublishedSpec(WorkerSpec(**fields), int(raw["window"]), bool(raw["last"]), dict(raw["resume_files"]),
                         LinkPlan.from_wire(raw["plan"]))


class RemoteWorker:
    """A worker rank as rank 0 sees it: no process handle (`pid` is on the worker's node); torchrun watches it."""

    exitcode = None
    pid: int | None

    def __init__(self, pid: int | None = None):
        self.pid = pid

    def is_alive(self) -> bool:
        return True

    def orphaned(self) -> bool:
        return False

    def stop(self) -> None:
        """Nothing to stop from here: a worker exits after its stop marker, or when rank 0's store is gone."""

    def join(self, timeout: float) -> None:
        """Nothing to wait for: the worker's own torchrun agent reaps it."""


class ElasticCoordinator(Coordinator):
    """A `Coordinator` whose workers are the ranks 1..K of a torchrun group (see the module docstring)."""

    def __init__(self, *args, run_store, node_addr: str, transport: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_store, self.node_addr, self.transport = run_store, node_addr, transport
        self.codec = Codec(self.run_id, codec_secret(run_store.secret, self.run_id))
        self.plan: LinkPlan | None = None

    def specs(self) -> list[WorkerSpec]:
        """As on one host, shipping layer files; replicas reduce over rank 0's store (no shared folder)."""
        return [dataclasses.replace(s, ship_layers=True, replica=store_replica(s.replica)) for s in super().specs()]

    def _resume_files(self, rank: int) -> dict[str, Path]:
        """The checkpoint files worker `rank` loads: its layers, and the head for the last worker."""
        if not self.opts.resume_dir:
            return {}
        paths = [layer_file(self.opts.resume_dir, layer) for layer in self.placement.layer_ids[rank]]
        if rank % self.stages == self.stages - 1:      # the last worker (of its replica)
            paths.append(head_file(self.opts.resume_dir))
        return {p.name: p for p in paths}

    def publish_specs(self, plan: LinkPlan) -> None:
        """Each worker's spec, resume files and the link plan, in rank 0's store under this attempt's token."""
        for spec in self.specs():
            files = self._resume_files(spec.rank)
            digests = {}
            for name, path in files.items():
                data = path.read_bytes()
                digests[name] = hashlib.sha256(data).hexdigest()
                self.run_store.put_raw(f"file/{spec.rank}/{name}", data)
            self.run_store.put(f"spec/{spec.rank}", spec_to_wire(spec, digests, plan))

    def _peers(self) -> list[str]:
        """Every worker rank's node address, from its verified key record (this waits for each to publish)."""
        hosts = []
        for r in range(self.k):
            try:
                hosts.append(peer_key(self.run_store, r + 1)[0])
            except TimeoutError as err:
                raise self._fail(r, f"did not publish its key: {err}") from None
            except EndpointRecordError as err:
                raise self._fail(r, f"has a key record in the store that was refused: {err}") from None
        return hosts

    def start(self) -> None:
        """Publish this rank's key; bind the results inbox admitting the workers' verified keys; publish it, the
        plan and the specs; make the process group if needed; connect to worker 0; wait until all are ready."""
        self.run_store.timeout_s = READY_TIMEOUT_S
        keys = publish_key(self.run_store, 0, self.node_addr)
        hosts = self._peers()
        self.plan = plan = LinkPlan.resolve(self.transport, [self.node_addr, *hosts], self.placement.devices,
                                            self.stages if self.placement.replicas > 1 else 0)
        print(f"auglocal-launch: links into workers 0-{self.k - 1}: {', '.join(plan.inbox)}; results: {plan.results}"
              + (f"; process group: {plan.group}" if plan.group else ""), flush=True)
        link = Link(f"tcp://{self.node_addr}:0", RESULTS_WINDOW, plan.results)
        results = bind_inbox(self.run_store, link, self.codec, "coordinator", keys, list(range(1, self.k + 1)),
                             max_frame=results_bound(ship_layers=True))
        try:
            publish_inbox(self.run_store, "results", results, keys)
            self.publish_specs(plan)
            if plan.group:
                init_group(self.run_store, 0, self.k + 1, plan.group, READY_TIMEOUT_S, self.node_addr)
            heads = []
            for h in range(0, self.k, self.stages):      # worker 0, or the first worker of every replica
                try:
                    heads.append(connect(self.run_store, f"inbox/{h}", self.codec, keys, plan.inbox[h],
                                         self.opts.window, src_rank=0, dst_rank=h + 1))
                except TimeoutError as err:
                    raise self._fail(h, f"did not publish its inbox: {err}") from None
                except EndpointRecordError as err:
                    raise self._fail(h, f"has an inbox record in the store that was refused: {err}") from None
            first = heads[0] if len(heads) == 1 else ShardedFeed(heads)
        except BaseException:
            results.close()
            raise
        pids = [int(self.run_store.get(f"pid/{r}")) for r in range(self.k)]
        self.attach(results, first, [RemoteWorker(pid) for pid in pids])
        self.wait_ready()

    def shutdown(self) -> None:
        """As the one-host coordinator's, then end the attempt's process group (if a gloo or nccl link made one)."""
        try:
            super().shutdown()
        finally:
            destroy_group()

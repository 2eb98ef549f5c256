"""The links of a run under torchrun: which transport each takes, and how its two ends find and trust each other.

Every rank makes an ephemeral CURVE key pair per attempt and publishes a signed record of it
(workers/wire/endpoint_record.py: its node address and public key, HMAC under the run secret) in rank 0's store
(`publish_key`). A receiver reads the verified keys of exactly the processes that send to it, puts them on its
CURVE allow-list, and only then binds and publishes its own signed endpoint record (`bind_inbox`,
`publish_inbox`); a sender verifies that record and connects as a CURVE client of the key it names (`connect`).
So no sender can connect before it is admitted, and a process whose key was not published under the run secret
completes no handshake.

`LinkPlan` is the transport of each link, decided by rank 0 and published in the workers' sealed specs:
`--transport auto` gives each pair what launch/transport_choice.pick_for_pair says for two hosts, except that
two CPU ranks on one node also take curve (every inbox here binds on the node's routable address; no ipc folder
is shared between ranks); `tcp` (no encryption: private networks only), `curve`, `gloo` and the GPU kinds are
taken as asked (a GPU kind between workers only: rank 0 feeds host-memory images over curve). The results inbox
of rank 0 is fed by every worker, so it is always a ZeroMQ link (curve, or tcp when asked). gloo and nccl links
need the default process group: `init_group` makes it over the attempt's store (a PrefixStore keyed by the
attempt token), and `destroy_group` ends it with the attempt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta

from auglocal.launch.run.transport_choice import Place, pick_for_pair
from auglocal.workers.links.curve import CurveKeyPair
from auglocal.workers.links.link import Link
from auglocal.workers.links.registry import (  # noqa: F401 - ZMQ_ONLY: imported from here by tests
    ACROSS_HOSTS,
    BY_NAME,
    CPU,
    CUDA,
    GROUP_TRANSPORTS,
    ZMQ_ONLY,
    auto_pick,
    group_backend_for,
)
from auglocal.workers.links.zmq_link import Receiver, Sender
from auglocal.workers.wire.endpoint_record import sign, verify
from auglocal.workers.wire.messages import Codec


@dataclass(frozen=True)
class LinkPlan:
    """Transports of one attempt: `inbox[r]` is the link into worker r (from worker r-1, or rank 0 for r = 0);
    `results` the link from every worker to rank 0; `group` the process-group backend, if any link needs one."""

    inbox: tuple[str, ...]
    results: str
    group: str | None
    stages: int = 0            # --replicas: workers per replica pipeline (0: one pipeline of every worker)

    def upstream(self, r: int) -> int:
        """The global rank that feeds worker r: rank 0 for the first worker of each replica, else worker r-1."""
        return 0 if r % (self.stages or len(self.inbox)) == 0 else r

    @classmethod
    def resolve(cls, asked: str, hosts: list[str], devices: list[str], stages: int = 0) -> LinkPlan:
        """`hosts[g]` is global rank g's node address, `devices[r]` worker r's device (rank 0 feeds from CPU)."""
        places = [Place(hosts[0], CPU), *(Place(h, d) for h, d in zip(hosts[1:], devices, strict=True))]
        zmq_link = auto_pick(CPU, ACROSS_HOSTS)   # CPU ends across hosts: the ZeroMQ link auto picks (curve)
        k = stages or len(devices)
        heads = [r % k == 0 for r in range(len(devices))]
        if asked == "auto":                      # a pair on one node may get a one-host-only link: not here
            picked = [pick_for_pair(places[0 if heads[r] else r], places[r + 1]) for r in range(len(devices))]
            inbox = tuple(t if BY_NAME[t].under_torchrun else zmq_link for t in picked)
        elif BY_NAME[asked].device == CUDA:      # rank 0 feeds images from host memory: its links stay ZeroMQ
            inbox = tuple(zmq_link if head else asked for head in heads)
        else:
            inbox = (asked,) * len(devices)
        group = group_backend_for(inbox)
        results = asked if asked in ZMQ_ONLY else zmq_link   # results are small: ZeroMQ, as asked if it is
        return cls(inbox, results, group, stages)

    def outbox(self, r: int) -> str | None:
        """The transport of worker r's link to worker r+1 (None for the last worker of its pipeline)."""
        k = self.stages or len(self.inbox)
        return self.inbox[r + 1] if r + 1 < len(self.inbox) and (r + 1) % k else None

    def to_wire(self) -> dict:
        return asdict(self)

    @classmethod
    def from_wire(cls, raw: dict) -> LinkPlan:
        return cls(tuple(raw["inbox"]), str(raw["results"]), raw["group"], int(raw.get("stages", 0)))


def publish_key(store, rank: int, node_addr: str) -> CurveKeyPair:
    """Make this rank's key pair for the attempt and publish its signed record (node address, public key)."""
    keys = CurveKeyPair.generate()
    store.put_raw(f"key/{rank}", sign(store.secret, node_addr, keys.public))
    return keys


def peer_key(store, rank: int) -> tuple[str, str]:
    """(node address, public key) that `rank` published, verified (EndpointRecordError if forged)."""
    return verify(store.secret, store.get_raw(f"key/{rank}"))


def bind_inbox(store, link: Link, codec: Codec, name: str, keys: CurveKeyPair, senders: list[int], *,
               max_frame: int | None = None) -> Receiver:
    """Bind `link`'s receiving end on its routable address, admitting exactly the verified keys of the ranks
    `senders` (before anything is published, so before any of them can connect). `max_frame`: the largest
    frame the link carries (workers/wire/frame_bounds.py; None: the codec's limit)."""
    admitted = [peer_key(store, rank)[1] for rank in senders]
    receiver = link.receiver(codec, name, allow_remote=True, curve=keys, max_frame=max_frame)
    for key in admitted if receiver.allowed is not None else ():
        receiver.allowed.allow(key)
    return receiver


def publish_inbox(store, name: str, receiver: Receiver, keys: CurveKeyPair) -> None:
    """Publish where `receiver` listens and this rank's public key, signed."""
    store.put_raw(name, sign(store.secret, receiver.address, keys.public))


def connect(store, name: str, codec: Codec, keys: CurveKeyPair, transport: str, window: int,
            src_rank: int | None = None, dst_rank: int | None = None) -> Sender:
    """The sending end of the link to the inbox published under `name`, verified first: a curve link
    admits only the server key the record names."""
    address, server_key = verify(store.secret, store.get_raw(name))
    link = Link(address, window, transport, server_key=server_key if BY_NAME[transport].curve else None,
                src_rank=src_rank, dst_rank=dst_rank, tag=dst_rank or 0)
    return link.sender(codec, curve=keys)


def inbox_link(host: str, plan: LinkPlan, r: int, window: int) -> Link:
    """The link into worker r (global rank r+1), bound on `host`, from global rank r (rank 0 into the first
    worker of each replica)."""
    return Link(f"tcp://{host}:0", window, plan.inbox[r], src_rank=plan.upstream(r), dst_rank=r + 1, tag=r + 1)


def interface_of(address: str) -> str | None:
    """The name of this machine's network interface that holds `address` (None if none holds it exactly)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addresses):
            return name
    return None


def init_group(store, rank: int, world_size: int, backend: str, timeout_s: float, node_addr: str) -> None:
    """The default process group of this attempt (all ranks), rendezvousing in rank 0's store under the token.

    gloo listens on the address its host name resolves to unless GLOO_SOCKET_IFNAME names an interface: when it
    is unset, the interface holding `node_addr` is named, so the group uses the address the other nodes reach."""
    import os

    import torch.distributed as dist

    if "GLOO_SOCKET_IFNAME" not in os.environ and (interface := interface_of(node_addr)):
        os.environ["GLOO_SOCKET_IFNAME"] = interface

    prefix = dist.PrefixStore(f"{store.token}/group", store.store)
    dist.init_process_group(backend, store=prefix, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def destroy_group() -> None:
    """End the attempt's process group (a no-op when none was made)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

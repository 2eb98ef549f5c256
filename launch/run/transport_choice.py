"""Which transport a link takes: `--transport auto` picks per pair, a named one is checked for being possible.

The rules read the transports' entries (workers/links/registry.py), so a new transport needs no change here.
`pick_for_pair` is the rule of `auto` for two placed processes, the entry whose `auto` names that placement:
CPU on one host -> ipc, CPU across hosts -> curve (tcp + CurveZMQ), GPU to GPU on one host -> cuda-ipc, GPU to
GPU across hosts -> nccl; a CPU end with a GPU end goes like CPU (the GPU worker copies through pinned host
memory, workers/runtime/worker.py). The single-host launcher (launch/run/coordinator.py) wires ZeroMQ links
only, so there `auto` means ipc, exactly as before, and `tcp` and `curve` (loopback ports, keys from
`OneHostKeys`) are the alternatives; gloo, nccl and cuda-ipc links are built by the launch across hosts
(torchrun, launch/backends/elastic/, `elastic_transport`), which owns the process group they need.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from auglocal.workers.links.curve import CurveKeyPair
from auglocal.workers.links.registry import (
    ACROSS_HOSTS,
    BY_NAME,
    CPU,
    CUDA,
    ONE_HOST,
    ONE_HOST_TRANSPORTS,
    TRANSPORTS,
    auto_pick,
)
from auglocal.workers.links.zmq_link import ipc_address

TRANSPORT_CHOICES = ("auto", *TRANSPORTS)


def _either(names) -> str:
    """'a, b or c'."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)


@dataclass(frozen=True)
class Place:
    """Where one end of a link runs: a host name (or address) and a device ('cpu' or 'cuda:N')."""

    host: str
    device: str = "cpu"


def pick_for_pair(src: Place, dst: Place) -> str:
    """The transport `auto` gives the link from `src` to `dst` (see the module docstring)."""
    device = CUDA if src.device.startswith("cuda") and dst.device.startswith("cuda") else CPU
    return auto_pick(device, ONE_HOST if src.host == dst.host else ACROSS_HOSTS)


def check_possible(transport: str, devices: list[str], gpu_count: int) -> None:
    """Raise ValueError (exit 2 in the CLI) for a transport these workers' devices cannot use."""
    if transport not in TRANSPORT_CHOICES:
        raise ValueError(f"--transport {transport!r}: expected one of {', '.join(TRANSPORT_CHOICES)}")
    if transport == "auto":
        return
    spec = BY_NAME[transport]
    gpu_workers = [d for d in devices if d.startswith("cuda")]
    if spec.device == CUDA and (gpu_count == 0 or not gpu_workers):
        raise ValueError(f"--transport {transport} moves tensors between GPUs, but "
                         + ("this machine has no CUDA GPU" if gpu_count == 0 else "the workers run on CPU")
                         + "; use auto, ipc or tcp on one host (gloo across hosts)")
    if len(set(gpu_workers)) < spec.gpus:
        raise ValueError(f"--transport {transport} needs workers on at least two GPUs (NCCL does not pair a GPU "
                         "with itself); use cuda-ipc on one GPU")


def one_host_transport(transport: str) -> str:
    """The link transport of the single-host launcher for the `--transport` asked (auto -> ipc)."""
    if transport == "auto":
        return auto_pick(CPU, ONE_HOST)
    if transport not in ONE_HOST_TRANSPORTS:
        raise ValueError(f"--transport {transport}: the single-host launcher wires {_either(ONE_HOST_TRANSPORTS)} "
                         "links; "
                         f"{transport} links need the process group of the launch across hosts "
                         "(torchrun, launch/backends/elastic/)")
    return transport


def binds_ipc_sockets(transport: str, elastic: bool) -> bool:
    """Whether the `--transport` asked makes the single-host launcher bind ipc:// sockets (in this user's socket
    folder: launch/backends/one_host/sockets.py); under torchrun every inbox binds tcp:// instead."""
    name = one_host_transport(transport) if transport == "auto" and not elastic else transport
    entry = BY_NAME.get(name)
    return entry is not None and entry.one_host_launcher and entry.scheme == "ipc"


def elastic_transport(transport: str) -> str:
    """The `--transport` of a run under torchrun, checked: every kind but ipc (each rank binds its inbox on its
    node's routable address; launch/backends/elastic/links.py resolves auto per pair)."""
    if transport in BY_NAME and not BY_NAME[transport].under_torchrun:
        raise ValueError(f"--transport {transport}: under --elastic every inbox binds on its node's address (tcp); "
                         "use auto, curve, tcp (private networks only) or gloo")
    return transport


@dataclass(frozen=True)
class OneHostKeys:
    """CURVE key pairs of one single-host attempt: the coordinator's and one per worker rank.

    On one host the launcher makes every pair (zmq.curve_keypair(), fresh per attempt, never written to disk)
    and hands each worker its own through the local process start, with the public keys it admits; across
    hosts each process makes its own and publishes it in a signed endpoint record instead.
    """

    coordinator: CurveKeyPair
    workers: tuple[CurveKeyPair, ...]

    @classmethod
    def generate(cls, workers: int) -> OneHostKeys:
        return cls(CurveKeyPair.generate(), tuple(CurveKeyPair.generate() for _ in range(workers)))

    def public(self, rank: int) -> str:
        """The public key (z85 text) of worker `rank`, or of the coordinator for rank -1."""
        return (self.coordinator if rank < 0 else self.workers[rank]).public.decode()

    def admitted(self) -> tuple[bytes, ...]:
        """Every public key of the attempt: each receiver admits them all (all are this run's processes)."""
        return (self.coordinator.public, *(pair.public for pair in self.workers))


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (the OS picks it); whoever binds it next should do so soon."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def link_address(transport: str, name: str, directory: str) -> str:
    """An address for a single-host link named `name`: an ipc socket in `directory`, or a loopback tcp port."""
    if transport in BY_NAME and BY_NAME[transport].scheme == "tcp":
        return f"tcp://127.0.0.1:{free_tcp_port()}"
    return ipc_address(name, directory)

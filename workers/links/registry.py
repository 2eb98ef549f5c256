"""Every link transport as one entry of data, so the facts about a transport live in one place.

Before this module, what a transport is (which ends it builds, where it applies, what `--transport auto` picks,
which process group it needs, what the single-host launcher and the launch across hosts accept) was spread over
eight parallel lists and five resolver functions in seven files. Now each of those is derived from `REGISTRY`:
`Link` (workers/links/link.py) builds its two ends from the entry, launch/run/transport_choice.py reads its rules
from the entries, and the lists other code imports (TRANSPORTS, GROUP_TRANSPORTS, ONE_HOST_TRANSPORTS, ...) are
computed below.

Adding a transport is one file plus one entry: write its out-of-band tensor path (a class like
workers/links/paths/cuda_ipc.py's `CudaIpcPath`, with the interface OobSender/OobReceiver use), then add one
`Transport(...)` to `REGISTRY` with a `path` function that builds it for one end. `check_entry` refuses an entry
that lacks a part, and tests/workers/test_transport_registry.py runs it on every entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from auglocal.workers.links.paths.cuda_ipc import CudaIpcPath
from auglocal.workers.links.paths.oob_link import DistPath, OobReceiver, OobSender
from auglocal.workers.links.zmq_link import Receiver, Sender

ONE_HOST, ACROSS_HOSTS = "one host", "across hosts"
CPU, CUDA = "cpu", "cuda"

#: What a transport may need, and what that means (an unknown need is an error in an entry).
NEEDS = {
    "pyzmq": "ZeroMQ sockets (header, credits and control always travel on them)",
    "curvezmq": "libzmq built with CURVE; its links bind tcp:// (encryption and a ZAP allow-list)",
    "torch.distributed": "a default process group joined by both ends (its backend is `group_backend`)",
    "cuda": "CUDA GPUs on both ends (tensor bytes stay in device memory)",
}


@dataclass(frozen=True)
class Transport:
    """One link transport.

    `where`: ONE_HOST and/or ACROSS_HOSTS, the placements its two ends may have; `device`: CPU or CUDA, where
    its tensor bytes live; `gpus`: the fewest distinct GPUs its workers need. `needs`: keys of NEEDS.
    `group_backend`: the torch.distributed backend of the process group it needs, None when it is not a
    process-group transport. `sender`/`receiver`: the classes of its two ends; `path(link, receiving)` builds
    the out-of-band tensor path one end hands to them (None: the ZeroMQ frames carry the tensor bytes too).
    `scheme`: the ZeroMQ scheme of its single-host addresses ("ipc" or "tcp"). `auto`: the placements (of
    `where`) on which `--transport auto` picks it for two `device` ends.
    """

    name: str
    where: frozenset[str]
    device: str
    needs: frozenset[str]
    sender: type
    receiver: type
    path: Callable[..., object] | None
    scheme: str
    group_backend: str | None = None
    gpus: int = 0
    auto: frozenset[str] = frozenset()

    @property
    def out_of_band(self) -> bool:
        """Tensor bytes leave ZeroMQ (header, credits and control stay on it)."""
        return self.path is not None

    @property
    def process_group(self) -> bool:
        """Its links need the default torch.distributed process group (and both ends' ranks in it)."""
        return self.group_backend is not None

    @property
    def curve(self) -> bool:
        """Its links are CurveZMQ links: each end needs a key pair, a sender the receiver's public key."""
        return "curvezmq" in self.needs

    @property
    def one_host_launcher(self) -> bool:
        """The single-host launcher (launch/run/coordinator.py) wires it: ZeroMQ-only links on one host."""
        return not self.out_of_band and ONE_HOST in self.where

    @property
    def under_torchrun(self) -> bool:
        """The launch across hosts takes it: every inbox there binds on its node's address, so a ZeroMQ-only
        transport must be a tcp:// one (out-of-band ones carry their headers on whatever address is given)."""
        return self.out_of_band or self.scheme == "tcp"


def _dist_path(link, receiving: bool) -> DistPath:
    """torch.distributed isend/irecv with the peer's rank; gloo moves host memory, nccl the current GPU's."""
    peer = link.src_rank if receiving else link.dst_rank
    device = torch.device(CPU) if link.transport == "gloo" else torch.device(CUDA, torch.cuda.current_device())
    return DistPath(link.transport, peer, link.tag, device)


def _cuda_ipc_path(link, receiving: bool) -> CudaIpcPath:
    """Device slots shared by CUDA IPC handles, one per credit of the window (both ends on one host)."""
    return CudaIpcPath(link.window, receiving=receiving)


_BOTH = frozenset({ONE_HOST, ACROSS_HOSTS})
_ZMQ = dict(sender=Sender, receiver=Receiver, path=None)

REGISTRY: tuple[Transport, ...] = (
    Transport("ipc", frozenset({ONE_HOST}), CPU, frozenset({"pyzmq"}), **_ZMQ, scheme="ipc",
              auto=frozenset({ONE_HOST})),
    Transport("tcp", _BOTH, CPU, frozenset({"pyzmq"}), **_ZMQ, scheme="tcp"),
    Transport("curve", _BOTH, CPU, frozenset({"pyzmq", "curvezmq"}), **_ZMQ, scheme="tcp",
              auto=frozenset({ACROSS_HOSTS})),
    Transport("gloo", _BOTH, CPU, frozenset({"pyzmq", "torch.distributed"}), OobSender, OobReceiver, _dist_path,
              scheme="ipc", group_backend="gloo"),
    Transport("nccl", _BOTH, CUDA, frozenset({"pyzmq", "torch.distributed", "cuda"}), OobSender, OobReceiver,
              _dist_path, scheme="ipc", group_backend="cpu:gloo,cuda:nccl", gpus=2, auto=frozenset({ACROSS_HOSTS})),
    Transport("cuda-ipc", frozenset({ONE_HOST}), CUDA, frozenset({"pyzmq", "cuda"}), OobSender, OobReceiver,
              _cuda_ipc_path, scheme="ipc", gpus=1, auto=frozenset({ONE_HOST})),
)


def _is_class(value, base: type) -> bool:
    return isinstance(value, type) and issubclass(value, base)


def check_entry(entry: Transport) -> None:
    """Raise ValueError for an entry that lacks a part or whose parts disagree."""
    problems = []
    if not entry.name:
        problems.append("no name")
    if not entry.where or not entry.where <= _BOTH:
        problems.append(f"where {sorted(entry.where)} is not a non-empty part of {sorted(_BOTH)}")
    if entry.device not in (CPU, CUDA):
        problems.append(f"device {entry.device!r} is neither {CPU!r} nor {CUDA!r}")
    if unknown := sorted(entry.needs - NEEDS.keys()):
        problems.append(f"unknown needs {unknown} (known: {sorted(NEEDS)})")
    if "pyzmq" not in entry.needs:
        problems.append("every link needs pyzmq (its header, credits and control travel on ZeroMQ)")
    if ("cuda" in entry.needs) != (entry.device == CUDA) or (entry.gpus > 0) != (entry.device == CUDA):
        problems.append("a CUDA transport, and only one, needs cuda and at least one GPU")
    if ("torch.distributed" in entry.needs) != entry.process_group:
        problems.append("a process-group transport, and only one, needs torch.distributed and names its backend")
    ends = _is_class(entry.sender, Sender), _is_class(entry.receiver, Receiver)
    if not ends[0]:
        problems.append("no sender class (a zmq_link.Sender)")
    if not ends[1]:
        problems.append("no receiver class (a zmq_link.Receiver)")
    out_of_band_ends = _is_class(entry.sender, OobSender) and _is_class(entry.receiver, OobReceiver)
    if _is_class(entry.sender, OobSender) != _is_class(entry.receiver, OobReceiver):
        problems.append("both ends out of band (OobSender, OobReceiver) with a path builder, or neither")
    if all(ends) and out_of_band_ends != callable(entry.path):
        problems.append("out-of-band ends (OobSender, OobReceiver) need a path builder, ZeroMQ ends none")
    if entry.scheme not in ("ipc", "tcp"):
        problems.append(f"scheme {entry.scheme!r} is neither 'ipc' nor 'tcp'")
    if entry.curve and entry.scheme != "tcp":
        problems.append("a CurveZMQ transport binds tcp://")
    if not entry.auto <= entry.where:
        problems.append(f"auto picks it on {sorted(entry.auto - entry.where)}, where it does not apply")
    if problems:
        raise ValueError(f"transport entry {entry.name!r}: " + "; ".join(problems))


def check_registry(entries: tuple[Transport, ...]) -> None:
    """Every entry whole, names unique, and exactly one `auto` pick for each device pair and placement."""
    for entry in entries:
        check_entry(entry)
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names) or "auto" in names:
        raise ValueError(f"transport names must be unique and not 'auto': {names}")
    for device in (CPU, CUDA):
        for place in sorted(_BOTH):
            picks = [e.name for e in entries if e.device == device and place in e.auto]
            if len(picks) != 1:
                raise ValueError(f"--transport auto needs exactly one pick for {device} ends {place}, got {picks}")


check_registry(REGISTRY)
BY_NAME: dict[str, Transport] = {entry.name: entry for entry in REGISTRY}


def auto_pick(device: str, place: str) -> str:
    """The transport `--transport auto` gives two `device` ends placed `place` (ONE_HOST or ACROSS_HOSTS)."""
    return next(e.name for e in REGISTRY if e.device == device and place in e.auto)


def _names(keep: Callable[[Transport], bool], entries=REGISTRY) -> tuple[str, ...]:
    return tuple(entry.name for entry in entries if keep(entry))


#: Transports a link may name, in the registry's order. "auto" is not one: launch/run/transport_choice.py
#: resolves it per pair.
TRANSPORTS = _names(lambda e: True)
#: The transports whose tensor bytes leave ZeroMQ.
OUT_OF_BAND = frozenset(_names(lambda e: e.out_of_band))
#: Link transport -> the backend of the process group it needs.
GROUP_TRANSPORTS = {entry.name: entry.group_backend for entry in REGISTRY if entry.process_group}
#: ZeroMQ-only transports that reach across hosts.
ZMQ_ONLY = _names(lambda e: not e.out_of_band and ACROSS_HOSTS in e.where)
#: What the single-host launcher wires.
ONE_HOST_TRANSPORTS = _names(lambda e: e.one_host_launcher)
#: Every transport, CPU ones first, then by the GPUs each needs (the order of benchmarks/transport.py).
BY_FEWEST_GPUS = _names(lambda e: True, sorted(REGISTRY, key=lambda e: e.gpus))
#: The transports that move GPU tensors, fewest GPUs first.
GPU_TRANSPORTS = _names(lambda e: e.device == CUDA, sorted(REGISTRY, key=lambda e: e.gpus))


def group_backend_for(transports) -> str | None:
    """The backend of the one process group that serves every link of `transports`, None when none needs one.
    A backend serves a transport when it names the transport's backend (as workers/links/paths/oob_link.py
    checks): "cpu:gloo,cuda:nccl" serves gloo and nccl links alike."""
    needed = {GROUP_TRANSPORTS[t] for t in transports if t in GROUP_TRANSPORTS}
    if not needed:
        return None
    serving = [backend for backend in set(GROUP_TRANSPORTS.values()) if all(need in backend for need in needed)]
    if not serving:
        raise ValueError(f"no process-group backend serves links of {sorted(set(transports))}")
    return min(serving, key=len)     # the plainest that serves them all

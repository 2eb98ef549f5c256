"""A link as plain data, and the one place that turns it into its two ends.

`Link` names an edge of the pipeline (address, window, transport, ranks) and builds its `Sender` and `Receiver`:
ZeroMQ's own (workers/links/zmq_link.py) or the out-of-band kinds that move tensor bytes by torch.distributed or CUDA
IPC (workers/links/paths/oob_link.py, workers/links/paths/cuda_ipc.py). It sits above all of them, so none of them
imports another
through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import zmq
from auglocal.workers.links import curve as _curve
from auglocal.workers.links.paths.cuda_ipc import CudaIpcPath
from auglocal.workers.links.paths.oob_link import DistPath, OobReceiver, OobSender
from auglocal.workers.links.zmq_link import Receiver, Sender
from auglocal.workers.wire.messages import Codec

#: Transports a link may name. ipc/tcp/curve: everything on ZeroMQ (ipc:// or tcp://, curve = tcp:// with
#: CurveZMQ). gloo/nccl/cuda-ipc: header, credits and control on ZeroMQ, tensor bytes out of band
#: (workers/links/paths/oob_link.py, workers/links/paths/cuda_ipc.py). "auto" is not a transport:
# launch/run/transport_choice.py resolves it
#: per pair.
TRANSPORTS = ("ipc", "tcp", "curve", "gloo", "nccl", "cuda-ipc")
_OOB = {"gloo", "nccl", "cuda-ipc"}


@dataclass(frozen=True)
class Link:
    """One directed edge as plain data (picklable into a spawned worker): where it lives, its window, and how
    its tensor bytes travel.

    `transport` is one of TRANSPORTS; by default the address's scheme decides (ipc:// or tcp://).
    `server_key` is the receiver's z85 CURVE public key (transport "curve"; verify it from a signed endpoint
    record first, workers/wire/endpoint_record.py). `src_rank`/`dst_rank` are the two ends' ranks in the default
    torch.distributed process group and `tag` tells this link from others between the same ranks (gloo, nccl);
    cuda-ipc needs none of them (both ends on one host).
    """

    address: str
    window: int = 2
    transport: str = ""
    server_key: str | None = None
    src_rank: int | None = None
    dst_rank: int | None = None
    tag: int = 0

    def __post_init__(self):
        if not self.transport:
            object.__setattr__(self, "transport", "tcp" if self.address.startswith("tcp://") else "ipc")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"link transport {self.transport!r} is not one of {TRANSPORTS}")
        if self.transport == "curve" and not self.address.startswith("tcp://"):
            raise ValueError(f"a curve link needs a tcp:// address, got {self.address!r}")
        if self.transport in {"gloo", "nccl"} and (self.src_rank is None or self.dst_rank is None):
            raise ValueError(f"a {self.transport} link needs src_rank and dst_rank (process-group ranks)")

    def receiver(
        self, codec: Codec, name: str, *, context: zmq.Context | None = None, allow_remote: bool = False,
        curve: _curve.CurveKeyPair | None = None, max_frame: int | None = None,
    ) -> Receiver:
        """Bind the receiving end (in the downstream process, before or after the sender connects).

        A curve link needs this process's key pair; admit senders with `receiver.allowed.allow(public_key)`.
        `max_frame`: the largest frame this link carries (see Receiver).
        """
        kwargs = dict(window=self.window, context=context, allow_remote=allow_remote,
                      curve=self._keys(curve, sending=False), max_frame=max_frame)
        if self.transport not in _OOB:
            return Receiver(self.address, codec, name, **kwargs)
        return OobReceiver(self.address, codec, name, self._path(receiving=True), **kwargs)

    def sender(self, codec: Codec, *, context: zmq.Context | None = None,
               curve: _curve.CurveKeyPair | None = None) -> Sender:
        """Connect the sending end (in the upstream process); a curve link needs this process's key pair."""
        keys = self._keys(curve, sending=True)
        kwargs = dict(window=self.window, context=context, curve=keys,
                      server_key=self.server_key if keys else None)
        if self.transport not in _OOB:
            return Sender(self.address, codec, **kwargs)
        return OobSender(self.address, codec, self._path(receiving=False), **kwargs)

    def _keys(self, curve: _curve.CurveKeyPair | None, sending: bool) -> _curve.CurveKeyPair | None:
        if self.transport == "curve" and curve is None:
            raise ValueError("a curve link needs this process's CurveKeyPair (CurveKeyPair.generate())")
        if self.transport == "curve" and sending and self.server_key is None:
            raise ValueError("a curve link needs the receiver's public key (server_key)")
        return curve if self.transport == "curve" else None

    def _path(self, receiving: bool):
        if self.transport == "cuda-ipc":
            return CudaIpcPath(self.window, receiving=receiving)
        peer = self.src_rank if receiving else self.dst_rank
        device = torch.device("cpu") if self.transport == "gloo" else torch.device("cuda", torch.cuda.current_device())
        return DistPath(self.transport, peer, self.tag, device)

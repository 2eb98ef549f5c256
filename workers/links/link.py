"""A link as plain data, and the one place that turns it into its two ends.

`Link` names an edge of the pipeline (address, window, transport, ranks) and builds its `Sender` and `Receiver`
from its transport's entry in workers/links/registry.py: ZeroMQ's own (workers/links/zmq_link.py) or the
out-of-band kinds that move tensor bytes by torch.distributed or CUDA IPC (workers/links/paths/oob_link.py,
workers/links/paths/cuda_ipc.py). It sits above all of them, so none of them imports another through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq
from auglocal.workers.links import curve as _curve
from auglocal.workers.links.registry import BY_NAME, TRANSPORTS, Transport
from auglocal.workers.links.zmq_link import Receiver, Sender
from auglocal.workers.wire.messages import Codec


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
        if self.transport not in BY_NAME:
            raise ValueError(f"link transport {self.transport!r} is not one of {TRANSPORTS}")
        if self.spec.curve and not self.address.startswith("tcp://"):
            raise ValueError(f"a {self.transport} link needs a tcp:// address, got {self.address!r}")
        if self.spec.process_group and (self.src_rank is None or self.dst_rank is None):
            raise ValueError(f"a {self.transport} link needs src_rank and dst_rank (process-group ranks)")

    @property
    def spec(self) -> Transport:
        """The registry entry of this link's transport (workers/links/registry.py)."""
        return BY_NAME[self.transport]

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
        if not self.spec.out_of_band:
            return self.spec.receiver(self.address, codec, name, **kwargs)
        return self.spec.receiver(self.address, codec, name, self.spec.path(self, True), **kwargs)

    def sender(self, codec: Codec, *, context: zmq.Context | None = None,
               curve: _curve.CurveKeyPair | None = None) -> Sender:
        """Connect the sending end (in the upstream process); a curve link needs this process's key pair."""
        keys = self._keys(curve, sending=True)
        kwargs = dict(window=self.window, context=context, curve=keys,
                      server_key=self.server_key if keys else None)
        if not self.spec.out_of_band:
            return self.spec.sender(self.address, codec, **kwargs)
        return self.spec.sender(self.address, codec, self.spec.path(self, False), **kwargs)

    def _keys(self, curve: _curve.CurveKeyPair | None, sending: bool) -> _curve.CurveKeyPair | None:
        if self.spec.curve and curve is None:
            raise ValueError(f"a {self.transport} link needs this process's CurveKeyPair (CurveKeyPair.generate())")
        if self.spec.curve and sending and self.server_key is None:
            raise ValueError(f"a {self.transport} link needs the receiver's public key (server_key)")
        return curve if self.spec.curve else None

"""A worker's ends: its inbox, its control inbox, its outgoing link, and the copy to host memory an outgoing
tensor needs when its transport carries host bytes.

Apart from the loop (worker.py) because a worker process opens ZeroMQ ends here, while a test or a thread host
hands the loop in-memory or thread links instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from auglocal.workers.links.link import Link
from auglocal.workers.runtime.spec import WorkerSpec
from auglocal.workers.wire.frame_bounds import HEADER_ONLY, inbox_bound
from auglocal.workers.wire.messages import Codec


@dataclass
class WorkerLinks:
    """The three ends a worker uses: its inbox, the next worker's inbox (none for the last), the results."""

    inbox: object
    outbox: object | None
    results: object
    control: object | None = None                       # the coordinator's control messages (one-worker recovery)
    reopen_outbox: Callable[[str], object] | None = None   # a fresh sender to a (new) downstream inbox address

    def close(self) -> None:
        for end in (self.inbox, self.outbox, self.results, self.control):
            if end is not None:
                end.close()


def bind_inbox(spec: WorkerSpec, codec: Codec):
    """Bind a worker's ZeroMQ inbox; on curve links a CURVE server that admits only `spec.admit` (the allow-list
    belongs to the process's ZeroMQ context, so its other CURVE receivers share it). Its frames are bounded by
    the largest tensor its schema allows at the run's batch size (workers/wire/frame_bounds.py)."""
    inbox = spec.inbox.receiver(codec, spec.name, curve=spec.curve, max_frame=inbox_bound(spec.schema, spec.config))
    for key in spec.admit if inbox.allowed is not None else ():
        inbox.allowed.allow(key)
    return inbox


def bind_control(spec: WorkerSpec, codec: Codec):
    """Bind a worker's control inbox, if it has one: header-only kinds, so header-sized frames."""
    return spec.control.receiver(codec, spec.name, curve=spec.curve, max_frame=HEADER_ONLY) if spec.control else None


def reopen_outbox(spec: WorkerSpec, codec: Codec, window: int | None = None) -> Callable[[str], object]:
    """A fresh sender to a (new) downstream inbox address, with the outbox's transport and keys."""
    def reopen(address: str):
        link = replace(spec.outbox, address=address) if spec.outbox else Link(address, window or 1)
        return link.sender(codec, curve=spec.curve)
    return reopen


def open_links(spec: WorkerSpec, codec: Codec) -> WorkerLinks:
    """ZeroMQ ends of a worker process: bind its inbox, connect to the next inbox and the results inbox.

    Links whose transport is curve use the spec's CurveKeyPair, and its receivers admit `spec.admit`."""
    inbox = bind_inbox(spec, codec)
    control = bind_control(spec, codec)
    return WorkerLinks(inbox,
                       spec.outbox.sender(codec, curve=spec.curve) if spec.outbox else None,
                       spec.results.sender(codec, curve=spec.curve),
                       control,
                       reopen_outbox(spec, codec))


def to_host(t: torch.Tensor) -> torch.Tensor:
    """CPU copy for the wire. A GPU tensor goes through pinned host memory (torch's caching host allocator,
    so the pinned block is reused), copied asynchronously and waited for: the DMA path without a staging copy."""
    if t.device.type != "cuda":
        return t
    host = torch.empty_like(t, device="cpu", pin_memory=True)   # keeps a channels_last layout for the wire
    host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host



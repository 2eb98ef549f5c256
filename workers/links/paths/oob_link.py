"""Links whose tensor bytes travel outside ZeroMQ: torch.distributed (gloo, NCCL) or CUDA IPC slots.

Headers, credits and control stay on the ZeroMQ link (workers/links/zmq_link.py): the message's header frame goes
as always, followed by one small *route* frame (msgpack) instead of the tensor frames; the tensor bytes take
the link's `TensorPath`. The receiver checks the header first (`Codec.read_header`: a stranger's header
is dropped before anything is received for it), learns each tensor's byte count from it (`tensor_sizes`), has
the path fetch exactly those bytes, and then decodes the message from that checked header and the bytes.
The credit window is unchanged, and it also bounds the buffers: a sent tensor is held, never reused or freed,
until the receiver's credit for its message arrives (by then the receiver has its bytes); a path waits on its
work then.

Paths: `DistPath` (torch.distributed isend/irecv on the default process group: gloo on CPU, NCCL on GPU; the
caller initialises the group, and names the ranks and a tag per link so links between the same two ranks
never cross) and `auglocal.workers.links.paths.cuda_ipc.CudaIpcPath` (same-host GPU slots).
"""

from __future__ import annotations

import datetime
from collections import deque
from dataclasses import replace

import msgpack
import torch
from auglocal.workers.links.zmq_link import Receiver, Sender
from auglocal.workers.wire.messages import Codec, Expect, Message, MessageError

MAX_ROUTE_BYTES = 4096
BYTES_TIMEOUT_S = 120.0   # once a validated header is in, its bytes are already on their way


def as_byte_tensor(frame) -> torch.Tensor:
    """A flat uint8 tensor over a frame's bytes (a CPU memoryview from the Codec, or a device tensor)."""
    if isinstance(frame, torch.Tensor):
        return frame
    if frame.nbytes == 0:   # an empty tensor: nothing to move (and frombuffer refuses empty buffers)
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(frame, dtype=torch.uint8)


def parse_route(frame, peer: str) -> dict:
    """The route frame of a message whose header already passed, as a dict; MessageError if malformed."""
    raw = memoryview(frame)
    if raw.nbytes > MAX_ROUTE_BYTES:
        raise MessageError(peer, "route", f"{raw.nbytes} bytes, above {MAX_ROUTE_BYTES}")
    try:
        route = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_str_len=256, max_bin_len=1024,
                                max_array_len=256, max_map_len=32, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MessageError(peer, "route", f"not a msgpack route frame ({exc})") from exc
    if not isinstance(route, dict):
        raise MessageError(peer, "route", "expected a msgpack map")
    return route


class DistPath:
    """Tensor bytes by torch.distributed point-to-point ops (gloo: CPU tensors; NCCL: CUDA tensors).

    `peer` is the other end's global rank, `tag` tells this link from others between the same ranks.
    `warm` posts a one-byte exchange so the pair's connection (an NCCL communicator) exists before the first
    activation. NCCL makes that communicator lazily, at the pair's first send or receive, and blocks until
    the other rank joins: so the receiving end warms only once its endpoint record is out (OobReceiver warms
    at its first `recv`, never while it is bound), else it would wait for a sender that cannot find it yet.
    `ops` is what posts the sends and receives (`isend`/`irecv` as torch.distributed's): the default process
    group unless a test hands a stand-in (a gloo group of its own, tests/workers/dist_standin.py).
    """

    def __init__(self, backend: str, peer: int, tag: int, device: torch.device, ops=None,
                 bytes_timeout_s: float = BYTES_TIMEOUT_S):
        if ops is None:
            import torch.distributed as dist

            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError(f"the {backend} transport needs torch.distributed's default process group: "
                                   "call torch.distributed.init_process_group first (launch/backends/elastic/ does)")
            if backend not in str(dist.get_backend()):   # "gloo", "nccl" or a mix such as "cpu:gloo,cuda:nccl"
                raise RuntimeError(f"the {backend} transport needs a {backend} process group, this one is "
                                   f"{dist.get_backend()}")
            ops = dist
        self._dist = ops
        self.peer, self.tag, self.device = peer, tag, device
        self.bytes_timeout_s = bytes_timeout_s
        self._warm_work = None

    def warm_send(self) -> None:
        self._warm_buf = torch.zeros(1, dtype=torch.uint8, device=self.device)
        self._warm_work = self._dist.isend(self._warm_buf, self.peer, tag=self.tag)

    def warm_recv(self) -> None:
        self._warm_buf = torch.empty(1, dtype=torch.uint8, device=self.device)
        self._warm_work = self._dist.irecv(self._warm_buf, self.peer, tag=self.tag)

    def _finish_warm(self) -> None:
        if self._warm_work is not None:
            self._warm_work.wait()
            self._warm_work = None

    def prepare(self, frames: list) -> dict:
        """The route of a message (the bytes are sent once its header is queued)."""
        return {"path": "dist", "tag": self.tag}

    def send(self, frames: list) -> tuple:
        """Post the sends of one message's tensor bytes; returns what must stay alive until they complete.

        The warm-up send is not waited for here: gloo completes a send only once the receiver has posted its
        receive, and a receiver warms at its first `recv`, which may come after this send (the peer reads
        only when asked). It rides with the first message and is waited for with it, at that message's credit;
        sends on one tag are matched in order, so the bytes still land after the warm-up byte."""
        pending = []
        if self._warm_work is not None:
            pending.append((self._warm_work, self._warm_buf))
            self._warm_work = None
        for frame in frames:
            tensor = as_byte_tensor(frame)
            if tensor.numel():
                pending.append((self._dist.isend(tensor, self.peer, tag=self.tag), tensor))
        return tuple(pending)

    @staticmethod
    def complete(pending: tuple) -> None:
        for work, _tensor in pending:
            work.wait()

    def receive(self, route: dict, sizes: list[int], peer: str) -> list[torch.Tensor]:
        """Receive one message's tensor bytes into fresh buffers, in the header's order. Bytes that do not come
        within `bytes_timeout_s` are a MessageError: gloo and NCCL raise from `Work.wait(timeout)` on a timeout
        (a RuntimeError, DistError included) rather than return False, so both ways are caught."""
        if route.get("path") != "dist" or route.get("tag") != self.tag:
            raise MessageError(peer, "route", f"expected a dist route with tag {self.tag}, got {route!r}")
        self._finish_warm()
        buffers = [torch.empty(n, dtype=torch.uint8, device=self.device) for n in sizes]
        works = [self._dist.irecv(b, self.peer, tag=self.tag) for b in buffers if b.numel()]
        timeout = datetime.timedelta(seconds=self.bytes_timeout_s)
        for work in works:
            try:
                done = work.wait(timeout)
            except RuntimeError as exc:
                raise MessageError(peer, "tensors", f"tensor bytes did not arrive within {self.bytes_timeout_s} s "
                                   f"({str(exc).strip()[:200]})") from exc
            if done is False:
                raise MessageError(peer, "tensors", f"tensor bytes did not arrive within {self.bytes_timeout_s} s")
        return buffers


class OobSender(Sender):
    """A Sender whose tensor bytes take `path`; header, route and credits go by ZeroMQ."""

    def __init__(self, address: str, codec: Codec, path, **kwargs):
        super().__init__(address, codec, **kwargs)
        self.path = path
        self.keeps_device = path.device.type != "cpu"   # the worker sends device tensors as they are
        self._pending: deque = deque()
        path.warm_send()

    def send(self, message: Message, timeout_ms: float) -> None:
        """As Sender.send. Once the window has room the path prepares the bytes (a CUDA IPC slot is filled
        and its event recorded before the header can be read); after the header is queued it sends them.
        On a device path every tensor travels from the path's device (labels and a replayed message's tensors
        may be host tensors): the receiver posts device receives, and a host tensor's send would take the
        group's CPU backend and never pair with them."""
        if self.keeps_device and any(t.device != self.path.device for t in message.tensors.values()):
            message = replace(message, tensors={name: t.to(self.path.device, non_blocking=True)
                                                for name, t in message.tensors.items()})
        header, *tensor_frames = self._codec.encode(message, keep_device=self.keeps_device)
        self._reserve(timeout_ms)
        route = msgpack.packb(self.path.prepare(tensor_frames), use_bin_type=True)
        self._put([header, route], timeout_ms)
        self._pending.append(self.path.send(tensor_frames))

    def _consumed(self) -> None:
        if self._pending:
            self.path.complete(self._pending.popleft())

    def close(self) -> None:
        """Close the ZeroMQ end; sends the receiver never took stay referenced by their work objects."""
        self._pending.clear()
        super().close()


class OobReceiver(Receiver):
    """A Receiver that fetches each validated message's tensor bytes through `path`."""

    def __init__(self, address: str, codec: Codec, name: str, path, **kwargs):
        super().__init__(address, codec, name, **kwargs)
        self.path = path
        self._warmed = False

    def warm(self) -> None:
        """Post the path's warm-up receive (once). Not in the constructor: the end is bound before its endpoint
        record is published, and an NCCL warm-up blocks until the sender, who needs that record, joins."""
        if not self._warmed:
            self._warmed = True
            self.path.warm_recv()

    def recv(self, timeout_ms: float, expect: Expect | None = None) -> Message:
        self.warm()
        return super().recv(timeout_ms, expect)

    def _decode(self, frames: list, expect: Expect | None, peer: str) -> Message:
        if not frames:
            return self._codec.decode(frames, expect, peer=peer)   # raises: an empty message
        header = self._codec.read_header(frames[0], peer)   # a stranger's header fails here, before any receive
        sizes = self._codec.tensor_sizes(header)
        if len(frames) != 2:
            raise MessageError(peer, "frames", f"expected a header and a route frame, got {len(frames)} frames "
                               "(is the sender on the same transport?)")
        buffers = self.path.receive(parse_route(frames[1], peer), sizes, peer)
        return self._codec.decode([frames[0], *buffers], expect, peer=peer, header=header)

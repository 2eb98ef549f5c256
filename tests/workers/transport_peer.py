"""The far end for the transport contract suite: one spawned process (rank 1 of a 2-process gloo group) that
opens links of any transport to the test process and does what it is told over a multiprocessing pipe.

The pipe is the test's control channel, not a transport under test. Commands: ("open", transport, ...),
("connect",), ("echo", n, timeout_ms), ("burst", n, timeout_ms), ("close",), ("stop",).

`cuda-ipc-double` is the cuda-ipc path (workers/links/paths/cuda_ipc.py) over the CPU double of CUDA IPC memory
(tests/workers/ipc_double.py): its ends are built here (`receiver_of`, `sender_of`), not by `Link`, which
knows only the real transports.
"""

from __future__ import annotations

import os
import tempfile

import torch
from auglocal.workers.links.curve import CurveKeyPair
from auglocal.workers.links.link import Link
from auglocal.workers.links.paths.cuda_ipc import CudaIpcPath
from auglocal.workers.links.paths.oob_link import OobReceiver, OobSender
from auglocal.workers.links.zmq_link import ipc_address, tcp_address
from auglocal.workers.wire.messages import Codec, Kind, Message

WAIT_MS = 20_000
DOUBLE = "cuda-ipc-double"


def make_link(transport: str, address: str, src: int, dst: int, tag: int, server_key: str | None = None) -> Link:
    """A window-2 link of `transport` from rank `src` to rank `dst` (ranks matter only to gloo and nccl)."""
    ranks = {"src_rank": src, "dst_rank": dst} if transport in ("gloo", "nccl") else {}
    return Link(address, 2, transport, server_key=server_key, tag=tag, **ranks)


def address_for(transport: str, directory: str, name: str) -> str:
    return ipc_address(name, directory) if transport in ("ipc", "cuda-ipc", DOUBLE) else tcp_address()


def receiver_of(transport: str, address: str, src: int, dst: int, tag: int, codec: Codec, name: str,
                directory: str, **kwargs):
    """The receiving end of a window-2 link of `transport` (the double's segments live in `directory`)."""
    if transport == DOUBLE:
        from tests.workers.ipc_double import CpuIpcMemory

        path = CudaIpcPath(2, receiving=True, memory=CpuIpcMemory(directory))
        return OobReceiver(address, codec, name, path, window=2, **kwargs)
    return make_link(transport, address, src, dst, tag).receiver(codec, name, **kwargs)


def sender_of(transport: str, address: str, src: int, dst: int, tag: int, server_key: str | None, codec: Codec,
              directory: str, **kwargs):
    """The sending end of a window-2 link of `transport` to `address`."""
    if transport == DOUBLE:
        from tests.workers.ipc_double import CpuIpcMemory

        path = CudaIpcPath(2, receiving=False, memory=CpuIpcMemory(directory))
        return OobSender(address, codec, path, window=2, **kwargs)
    return make_link(transport, address, src, dst, tag, server_key).sender(codec, **kwargs)


def close_end(end) -> None:
    """Close a link end and remove the double's segments it made (if any)."""
    end.close()
    memory = getattr(getattr(end, "path", None), "memory", None)
    if hasattr(memory, "segments"):
        memory.close()


def init_group(store_path: str, rank: int, backend: str = "gloo") -> None:
    """A 2-process group over a FileStore (no ports to pick)."""
    import torch.distributed as dist

    store = dist.FileStore(store_path, 2)
    dist.init_process_group(backend, store=store, rank=rank, world_size=2)


def exchange(command: str, args: list, inbox, outbox):
    """The commands that only use open ends (any link kind, memlink included): echo n messages back, or
    send a burst of n without receiving anything, reporting which sends timed out."""
    n, timeout_ms = args
    if command == "echo":
        for _ in range(n):
            message = inbox.recv(timeout_ms)
            outbox.send(Message(message.kind, "peer", message.epoch, message.step, message.layer,
                                message.tensors, message.meta), timeout_ms)
        return ("ok", inbox.rejected)
    outcomes = []
    for step in range(n):
        try:
            outbox.send(Message(Kind.TRAIN, "peer", step=step, tensors={"x": torch.full((8,), step)}), timeout_ms)
            outcomes.append("sent")
        except TimeoutError:
            outcomes.append("timeout")
    return outcomes


def serve_memory(conn, inbox, outbox) -> None:
    """The peer as a thread over in-memory links (workers/links/memlink.py): echo and burst until "close"."""
    while True:
        command, *args = conn.recv()
        if command == "close":
            conn.send("ok")
            return
        try:
            conn.send(exchange(command, args, inbox, outbox))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def serve(conn, run_id: str, secret: str, store_path: str | None, backend: str = "gloo") -> None:
    """The peer's command loop (the spawned process's target). With two GPUs it works on the second one:
    NCCL does not pair a GPU with itself."""
    torch.set_num_threads(1)
    if store_path:
        init_group(store_path, 1, backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(1 if torch.cuda.device_count() >= 2 else 0)
    codec = Codec(run_id, secret)
    directory = tempfile.mkdtemp(prefix="al-peer-")
    inbox = outbox = keys = None
    pending: tuple | None = None
    try:
        while True:
            command, *args = conn.recv()
            try:
                if command == "open":   # bind our inbox; the test's key is admitted before anyone connects
                    transport, test_address, test_key, tag = args
                    keys = CurveKeyPair.generate() if transport == "curve" else None
                    inbox = receiver_of(transport, address_for(transport, directory, f"peer{tag}"), 0, 1, tag,
                                        codec, "peer", directory, curve=keys)
                    if inbox.allowed is not None:
                        inbox.allowed.allow(test_key)
                    pending = (transport, test_address, test_key, tag)
                    conn.send((inbox.address, keys.public.decode() if keys else None))
                elif command == "connect":   # the test has admitted our key: connect our outbox
                    transport, test_address, test_key, tag = pending
                    outbox = sender_of(transport, test_address, 1, 0, tag + 1, test_key, codec, directory,
                                       curve=keys)
                    conn.send("ok")
                elif command in ("echo", "burst"):
                    conn.send(exchange(command, args, inbox, outbox))
                elif command == "close":
                    for end in (outbox, inbox):
                        if end is not None:
                            close_end(end)
                    inbox = outbox = None
                    conn.send("ok")
                elif command == "stop":
                    conn.send("ok")
                    return
            except Exception as exc:   # report to the test instead of hanging it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        for end in (outbox, inbox):
            if end is not None:
                close_end(end)
        if store_path:
            import torch.distributed as dist
            dist.destroy_process_group()
        os.rmdir(directory) if not os.listdir(directory) else None

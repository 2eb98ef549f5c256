"""The transport contract: every link transport keeps the same promises, checked by one suite.

Each row opens a pair of links (test process -> peer, peer -> test process) of one transport (memlink, the
in-memory links of unit tests, with a peer thread) to a peer process
(tests/workers/transport_peer.py), spawned once for the module and joined with this process in a 2-rank gloo
group (FileStore), so gloo links are real cross-process links. The promises: a window of 2 (the third send
waits and times out), order kept, receive timeouts, strangers (wrong secret or run) dropped and counted
without costing the link anything, every dtype the wire allows arriving bitwise equal, channels_last layout
kept, payload bytes checked in every test (not only header steps). CUDA IPC and NCCL rows run the same tests
on a GPU machine (marked gpu; skipped without CUDA, NCCL also without two GPUs); the cuda-ipc-double row runs
the cuda-ipc path's slot, handle, offset and event logic on CPU everywhere (tests/workers/ipc_double.py;
tests/workers/test_cuda_ipc_double.py shows it fails on the old handle-only slot cache). Plus CURVE's own
promise (an unknown client key never delivers) and signed endpoint records.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import secrets
import shutil
import tempfile
import threading
import time

import pytest
import torch
import torch.distributed as dist
import zmq
from auglocal.workers.links.curve import CurveKeyPair, stop_authenticator
from auglocal.workers.links.memlink import MemoryLink
from auglocal.workers.links.zmq_link import Receiver, Sender
from auglocal.workers.wire import endpoint_record
from auglocal.workers.wire.messages import DTYPES, Codec, Kind, Message

from tests.workers.transport_peer import (
    DOUBLE,
    address_for,
    close_end,
    init_group,
    receiver_of,
    sender_of,
    serve,
    serve_memory,
)
from tests.workers.waiting import nothing_arrives_until_rejected

WAIT_MS = 20_000
RUN = "contract"
_GPU = torch.cuda.is_available()
_TWO_GPUS = _GPU and torch.cuda.device_count() >= 2

TRANSPORTS = [
    "memlink", "ipc", "tcp", "curve", "gloo", DOUBLE,
    pytest.param("cuda-ipc", marks=[pytest.mark.gpu, pytest.mark.skipif(not _GPU, reason="needs a CUDA GPU")]),
    pytest.param("nccl", marks=[pytest.mark.gpu, pytest.mark.skipif(not _TWO_GPUS, reason="needs two CUDA GPUs")]),
]


def ask(conn, *command):
    """Send the peer a command and return its answer; its failures fail the test here."""
    conn.send(command)
    if not conn.poll(60):
        raise AssertionError(f"peer did not answer {command[0]!r} within 60 s")
    answer = conn.recv()
    if isinstance(answer, tuple) and answer and answer[0] == "error":
        raise AssertionError(f"peer failed {command[0]!r}: {answer[1]}")
    return answer


@pytest.fixture(scope="module")
def peer():
    """The peer process and this process as ranks 1 and 0 of one gloo group (nccl too with two GPUs)."""
    directory = tempfile.mkdtemp(prefix="al-contract-")
    secret = secrets.token_hex(16)
    store = os.path.join(directory, "store")
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    backend = "cpu:gloo,cuda:nccl" if _TWO_GPUS else "gloo"
    process = multiprocessing.get_context("spawn").Process(target=serve, args=(theirs, RUN, secret, store, backend),
                                                            daemon=True)
    process.start()
    init_group(store, 0, backend)
    if _GPU:
        torch.cuda.set_device(0)
    context = zmq.Context()
    try:
        yield {"conn": ours, "codec": Codec(RUN, secret), "dir": directory, "context": context,
               "tags": itertools.count(10, 2)}
        ask(ours, "stop")
        process.join(30)
    finally:
        if process.is_alive():
            process.kill()
        dist.destroy_process_group()
        stop_authenticator(context)
        context.destroy(linger=0)
        shutil.rmtree(directory, ignore_errors=True)


class Pair:
    """This process's ends of one transport's link pair: `outbox` to the peer, `inbox` from it.

    memlink (workers/links/memlink.py, in-process links of the same interface) gets a peer thread instead of the
    peer process, driven by the same commands."""

    def __init__(self, peer, transport: str):
        self.transport, self.codec = transport, peer["codec"]
        self.keys, self.device, self.thread = None, torch.device("cpu"), None
        if transport == "memlink":
            self._open_memory()
        else:
            self._open(peer, transport)

    def _open_memory(self) -> None:
        self.inbox, peer_inbox = MemoryLink(self.codec, "test"), MemoryLink(self.codec, "peer")
        self.outbox = peer_inbox.sender()
        self.conn, theirs = multiprocessing.Pipe()
        self.thread = threading.Thread(target=serve_memory, args=(theirs, peer_inbox, self.inbox.sender()),
                                       daemon=True)
        self.thread.start()

    def _open(self, peer, transport: str) -> None:
        self.conn, self.context = peer["conn"], peer["context"]
        self.keys = CurveKeyPair.generate() if transport == "curve" else None
        self.device = torch.device("cuda", 0) if transport in ("cuda-ipc", "nccl") else torch.device("cpu")
        tag = next(peer["tags"])
        public = self.keys.public.decode() if self.keys else None
        self.inbox = receiver_of(transport, address_for(transport, peer["dir"], f"test{tag}"), 1, 0, tag + 1,
                                 self.codec, "test", peer["dir"], curve=self.keys, context=self.context)
        peer_address, peer_key = ask(self.conn, "open", transport, self.inbox.address, public, tag)
        if self.inbox.allowed is not None:
            self.inbox.allowed.allow(peer_key)
        self.outbox = sender_of(transport, peer_address, 0, 1, tag, peer_key, self.codec, peer["dir"],
                                curve=self.keys, context=self.context)
        ask(self.conn, "connect")

    def stranger(self, codec: Codec):
        """A plain sender to our inbox (CURVE: with a key we admit, so only the codec can stop it)."""
        if self.transport == "memlink":
            return contextlib.closing(self.inbox.sender(codec))
        if self.keys is None:   # past the handshake (it knows the run's password), as the CURVE row's is
            return Sender(self.inbox.address, codec, context=self.context, handshake_secret=self.codec.secret)
        keys = CurveKeyPair.generate()
        self.inbox.allowed.allow(keys.public)
        return Sender(self.inbox.address, codec, context=self.context, curve=keys, server_key=self.keys.public)

    def close(self) -> None:
        close_end(self.outbox)
        close_end(self.inbox)
        ask(self.conn, "close")
        if self.thread is not None:
            self.thread.join(10)


@pytest.fixture(params=TRANSPORTS)
def pair(request, peer):
    links = Pair(peer, request.param)
    yield links
    links.close()


def every_dtype(device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for name, dtype in DTYPES.items():
        if dtype.is_floating_point:
            tensors[name] = torch.randn(3, 5, generator=g).to(dtype)
        elif dtype == torch.bool:
            tensors[name] = torch.rand(3, 5, generator=g) > 0.5
        else:
            tensors[name] = torch.randint(-100 if dtype.is_signed else 0, 100, (3, 5), generator=g).to(dtype)
    tensors["channels_last"] = torch.randn(2, 3, 4, 5, generator=g).contiguous(memory_format=torch.channels_last)
    tensors["empty"] = torch.empty(0, 7)
    tensors["scalar"] = torch.tensor(2.5)
    return {name: t.to(device) for name, t in tensors.items()}


def test_every_dtype_and_layout_arrives_bitwise_equal(pair):
    sent = every_dtype(pair.device)
    pair.outbox.send(Message(Kind.TRAIN, "test", epoch=1, step=7, layer=2, tensors=sent, meta={"k": [1, 2]}),
                     WAIT_MS)
    assert ask(pair.conn, "echo", 1, WAIT_MS)[0] == "ok"
    got = pair.inbox.recv(WAIT_MS)
    assert (got.kind, got.sender, got.epoch, got.step, got.layer, got.meta) == (Kind.TRAIN, "peer", 1, 7, 2,
                                                                                 {"k": [1, 2]})
    assert list(got.tensors) == list(sent)
    for name, tensor in sent.items():
        back = got.tensors[name]
        assert back.dtype == tensor.dtype and back.shape == tensor.shape and back.stride() == tensor.stride(), name
        assert back.device.type == pair.device.type, name
        assert torch.equal(back.cpu(), tensor.cpu()), name


def test_order_is_kept_under_a_full_window(pair):
    count = 12

    def send_all():   # the outbox is used from this thread only; the inbox from the test's
        for step in range(count):
            x = torch.full((64,), step, device=pair.device)
            pair.outbox.send(Message(Kind.TRAIN, "test", step=step, tensors={"x": x}), WAIT_MS)

    pair.conn.send(("echo", count, WAIT_MS))
    sender = threading.Thread(target=send_all)
    sender.start()
    steps = []
    for _ in range(count):
        message = pair.inbox.recv(WAIT_MS)
        assert torch.equal(message.tensors["x"].cpu(), torch.full((64,), message.step))
        steps.append(message.step)
    sender.join(30)
    assert pair.conn.recv()[0] == "ok"
    assert steps == list(range(count))


def test_window_of_two_then_timeout(pair):
    outcomes = ask(pair.conn, "burst", 3, 300)
    assert outcomes == ["sent", "sent", "timeout"]
    got = [pair.inbox.recv(WAIT_MS) for _ in range(2)]
    assert [message.step for message in got] == [0, 1]
    for message in got:   # the payload bytes, not only the header: two slots of one link are two offsets
        assert torch.equal(message.tensors["x"].cpu(), torch.full((8,), message.step)), message.step
    with pytest.raises(TimeoutError):
        pair.inbox.recv(100)


def test_receive_times_out(pair):
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        pair.inbox.recv(150)
    assert 0.14 <= time.monotonic() - start < 5


@pytest.mark.parametrize("intruder", ["wrong secret", "wrong run"])
def test_strangers_are_dropped_and_counted(pair, intruder):
    codec = Codec("other-run" if intruder == "wrong run" else RUN,
                  pair.codec.secret if intruder == "wrong run" else "not-the-secret")
    with pair.stranger(codec) as stranger:
        stranger.send(Message(Kind.TRAIN, "intruder", tensors={"x": torch.ones(32)}), WAIT_MS)
        nothing_arrives_until_rejected(pair.inbox, 1, 500)
    assert pair.inbox.rejected == 1
    pair.outbox.send(Message(Kind.TRAIN, "test", step=3, tensors={"x": torch.ones(4, device=pair.device)}), WAIT_MS)
    assert ask(pair.conn, "echo", 1, WAIT_MS)[0] == "ok"
    got = pair.inbox.recv(WAIT_MS)
    assert got.step == 3   # the link still works, nothing of the stranger's got through
    assert torch.equal(got.tensors["x"].cpu(), torch.ones(4))


def test_growing_messages_arrive_bitwise_equal(pair):
    """Messages that grow and shrink: a slot grown inside its segment must be read whole, never through the
    stale, shorter view of an earlier slot at the same offset (cuda-ipc), and every payload byte must be the
    sent one."""
    sizes = [128, 128, 256, 256, 512, 512, 64, 1024, 32, 1024]
    pair.conn.send(("echo", len(sizes), WAIT_MS))
    for step, n in enumerate(sizes):
        x = torch.arange(n, dtype=torch.float32, device=pair.device) + 1000 * step
        pair.outbox.send(Message(Kind.TRAIN, "test", step=step, tensors={"x": x}), WAIT_MS)
        message = pair.inbox.recv(WAIT_MS)
        assert message.step == step
        assert torch.equal(message.tensors["x"].cpu(), x.cpu()), (step, n)
    assert pair.conn.recv()[0] == "ok"


def test_peer_with_an_unknown_curve_key_never_delivers():
    codec = Codec(RUN, "secret")
    server, known, unknown = CurveKeyPair.generate(), CurveKeyPair.generate(), CurveKeyPair.generate()
    context = zmq.Context()
    try:
        with Receiver("tcp://127.0.0.1:*", codec, "test", context=context, curve=server) as inbox:
            inbox.allowed.allow(known.public)
            with (Sender(inbox.address, codec, context=context, curve=unknown, server_key=server.public) as intruder,
                  Sender(inbox.address, codec, context=context, curve=known, server_key=server.public) as friend):
                try:
                    intruder.send(Message(Kind.TRAIN, "intruder", step=1), 1000)
                except TimeoutError:
                    pass   # the handshake was refused: ZeroMQ has no pipe to queue the message on
                with pytest.raises(TimeoutError):
                    inbox.recv(1000)
                friend.send(Message(Kind.TRAIN, "friend", step=2), WAIT_MS)
                assert inbox.recv(WAIT_MS).sender == "friend"
                with pytest.raises(TimeoutError):
                    inbox.recv(300)
            assert inbox.rejected == 0 and inbox.allowed.refused >= 1
    finally:
        stop_authenticator(context)
        context.destroy(linger=0)


def test_endpoint_record_round_trip_and_refusals():
    keys = CurveKeyPair.generate()
    record = endpoint_record.sign("run-secret", "tcp://10.0.0.2:5555", keys.public)
    assert endpoint_record.verify("run-secret", record) == ("tcp://10.0.0.2:5555", keys.public.decode())
    with pytest.raises(endpoint_record.EndpointRecordError, match="HMAC"):
        endpoint_record.verify("another-secret", record)
    forged = record.replace(b"10.0.0.2", b"10.6.6.6")
    with pytest.raises(endpoint_record.EndpointRecordError, match="HMAC"):
        endpoint_record.verify("run-secret", forged)
    for garbage in (b"", b"\xc1", b"x" * 5000, endpoint_record.sign("s", "e", keys.public)[:-3]):
        with pytest.raises(endpoint_record.EndpointRecordError):
            endpoint_record.verify("run-secret", garbage)

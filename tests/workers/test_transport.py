"""Tests for the wire format (auglocal.workers.wire.messages) and the credit-windowed ZeroMQ links
(auglocal.workers.links.zmq_link)."""

import contextlib
import multiprocessing
import shutil
import tempfile
import threading
import time
import warnings

import msgpack
import pytest
import torch
import zmq
from auglocal.workers.links.link import Link
from auglocal.workers.links.zap import join_plain
from auglocal.workers.links.zmq_link import Receiver, Sender, ipc_address, tcp_address
from auglocal.workers.wire.messages import (
    MAX_HEADER_BYTES,
    Codec,
    Kind,
    Message,
    MessageError,
    TensorSpec,
)

from tests.workers.waiting import nothing_arrives_until_rejected
from tests.workers.wire_headers import header_of, with_header

RUN, SECRET = "run-1", "s3cret"
WAIT_MS = 5000


@pytest.fixture
def codec():
    return Codec(RUN, SECRET)


@pytest.fixture
def short_dir():
    # pytest's tmp_path can exceed the ~100-character limit of a Unix socket path
    directory = tempfile.mkdtemp(prefix="al-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["ipc", "tcp"])
def address(request, short_dir):
    return ipc_address("link", short_dir) if request.param == "ipc" else tcp_address()


@pytest.fixture
def link_pair(address, codec):
    """A bound Receiver and a connected Sender (window 2) over the parametrised transport."""
    receiver = Receiver(address, codec, "w1", window=2)
    sender = Sender(receiver.address, codec, window=2)
    yield sender, receiver
    sender.close()
    receiver.close()


def all_kinds_of_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    return {
        "f32": torch.randn(2, 3, 4, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(3, 2, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "i64": torch.arange(-3, 7),
        "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "u8": torch.arange(250, 256, dtype=torch.uint8),
        "i8": torch.arange(-4, 4, dtype=torch.int8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "scalar_int": torch.tensor(7),
        "empty": torch.empty(0, 3),
        "empty_bf16": torch.empty(2, 0, dtype=torch.bfloat16),
        "transposed": base.t(),
        "sliced": base[:, ::2],
        "needs_grad": torch.ones(3, requires_grad=True) * 2,
    }


def sample_message(**tensors: torch.Tensor) -> Message:
    return Message(
        Kind.TRAIN,
        "w0",
        epoch=2,
        step=17,
        layer=5,
        tensors=tensors,
        meta={"lr": 0.05, "ids": [1, 2, 3], "note": "hi", "nested": {"ok": True, "none": None}},
    )


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor.detach()), name
        assert got[name].data_ptr() % got[name].element_size() == 0, f"{name} is misaligned"


# ---------------------------------------------------------------- round trips


def test_round_trip_every_dtype_and_layout_over_socket(link_pair):
    sender, receiver = link_pair
    tensors = all_kinds_of_tensors()
    sender.send(sample_message(**tensors), WAIT_MS)
    got = receiver.recv(WAIT_MS)
    assert (got.kind, got.sender, got.epoch, got.step, got.layer) == (Kind.TRAIN, "w0", 2, 17, 5)
    assert got.meta == {"lr": 0.05, "ids": [1, 2, 3], "note": "hi", "nested": {"ok": True, "none": None}}
    assert_same_tensors(got.tensors, tensors)


def test_received_tensors_outlive_their_frames_and_are_writable(link_pair):
    sender, receiver = link_pair
    big = torch.arange(100_000, dtype=torch.float32)  # above pyzmq's copy threshold: a true zero-copy frame
    sender.send(sample_message(x=big), WAIT_MS)
    got = receiver.recv(WAIT_MS).tensors["x"]
    sender.send(sample_message(x=torch.zeros(100_000)), WAIT_MS)
    receiver.recv(WAIT_MS)
    import gc

    gc.collect()
    assert torch.equal(got, big)
    got.add_(1)  # a worker may apply in-place ops to what it received
    assert got[0].item() == 1.0


def test_metrics_and_control_messages_without_tensors(link_pair):
    sender, receiver = link_pair
    sender.send(Message(Kind.METRICS, "w3", epoch=1, step=9, meta={"loss": 1.25, "acc": 0.5}), WAIT_MS)
    sender.send(Message(Kind.STOP, "coordinator", meta={"command": "stop"}), WAIT_MS)
    first, second = receiver.recv(WAIT_MS), receiver.recv(WAIT_MS)
    assert (first.kind, first.meta, first.tensors) == (Kind.METRICS, {"loss": 1.25, "acc": 0.5}, {})
    assert (second.kind, second.sender, second.layer) == (Kind.STOP, "coordinator", -1)


def echo_child(inbound: Link, outbound: Link, count: int) -> None:
    """Child process: receive `count` messages and send each back with its tensor doubled."""
    codec = Codec(RUN, SECRET)
    with inbound.receiver(codec, "child") as receiver, outbound.sender(codec) as sender:
        for _ in range(count):
            message = receiver.recv(30_000)
            reply = Message(Kind.METRICS, "child", step=message.step, tensors={"y": message.tensors["x"] * 2})
            sender.send(reply, 30_000)
        sender.wait_all(30_000)


def test_round_trip_across_a_spawned_process(short_dir, codec):
    to_child = Link(ipc_address("to-child", short_dir), window=2)
    with Receiver(tcp_address(), codec, "parent") as receiver:
        from_child = Link(receiver.address, window=2)
        child = multiprocessing.get_context("spawn").Process(target=echo_child, args=(to_child, from_child, 3))
        child.start()
        try:
            with to_child.sender(codec) as sender:
                xs = [torch.randn(4, 8, dtype=torch.float64) for _ in range(3)]
                for step, x in enumerate(xs):
                    sender.send(Message(Kind.TRAIN, "parent", step=step, tensors={"x": x}), 60_000)
                for step, x in enumerate(xs):
                    reply = receiver.recv(60_000)
                    assert (reply.kind, reply.sender, reply.step) == (Kind.METRICS, "child", step)
                    assert torch.equal(reply.tensors["y"], x * 2)
                sender.wait_all(WAIT_MS)
            child.join(30)
            assert child.exitcode == 0
        finally:
            if child.is_alive():
                child.kill()


def test_decode_from_read_only_bytes_copies_without_warning(codec):
    tensors = all_kinds_of_tensors()
    frames = [bytes(frame) for frame in codec.encode(sample_message(**tensors))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same_tensors(codec.decode(frames).tensors, tensors)


# ---------------------------------------------------------------- rejections (codec level)


def encoded(codec, **tensors):
    return codec.encode(sample_message(**tensors))


def rejected(codec, frames, expect=None) -> MessageError:
    with pytest.raises(MessageError) as info:
        codec.decode(frames, expect, peer="<peer 01>")
    assert info.value.sender in str(info.value) and info.value.field in str(info.value)
    return info.value


def test_truncated_frame_is_rejected(codec):
    frames = encoded(codec, x=torch.ones(10))
    error = rejected(codec, [frames[0], bytes(frames[1])[:-4]])
    assert (error.sender, error.field) == ("w0", "tensors[x].nbytes")
    assert "truncated" in str(error)


def test_wrong_frame_count_is_rejected(codec):
    frames = encoded(codec, x=torch.ones(2), y=torch.ones(3))
    error = rejected(codec, frames[:2])
    assert (error.sender, error.field) == ("w0", "frames")
    assert rejected(codec, [*frames, b"extra"]).field == "frames"
    assert rejected(codec, []).field == "frames"


def test_oversized_message_is_rejected(codec):
    small = Codec(RUN, SECRET, max_message_bytes=1000)
    error = rejected(small, encoded(codec, a=torch.ones(150), b=torch.ones(150)))
    assert (error.sender, error.field) == ("w0", "size")
    with pytest.raises(ValueError, match="max_message_bytes"):
        small.encode(sample_message(a=torch.ones(300)))


def test_wrong_schema_version_is_rejected(codec):
    error = rejected(codec, with_header(encoded(codec, x=torch.ones(1)), v=99))
    assert (error.sender, error.field) == ("w0", "version")
    assert rejected(codec, with_header(encoded(codec), v=True)).field == "version"


def test_foreign_run_and_wrong_secret_are_rejected(codec):
    """Both fail before the header's claims are believed: a stranger's message, not a peer's failure."""
    error = rejected(codec, encoded(Codec("run-0", SECRET), x=torch.ones(1)))
    assert (error.field, error.foreign) == ("run_id", True)
    error = rejected(codec, encoded(Codec(RUN, "stale"), x=torch.ones(1)))
    assert (error.field, error.foreign) == ("secret", True)
    error = rejected(codec, with_header(encoded(codec), v=99))
    assert (error.sender, error.field, error.foreign) == ("w0", "version", False)


def test_unknown_dtype_and_kind_are_rejected(codec):
    frames = encoded(codec, x=torch.ones(2))
    spec = dict(header_of(frames)["tensors"][0], dtype="complex64")
    error = rejected(codec, with_header(frames, tensors=[spec]))
    assert (error.sender, error.field) == ("w0", "tensors[x].dtype")
    assert rejected(codec, with_header(frames, kind="gossip")).field == "kind"
    assert rejected(codec, with_header(frames, kind=["train"])).field == "kind"


def test_shape_inconsistent_with_nbytes_is_rejected(codec):
    frames = encoded(codec, x=torch.ones(2, 3))
    spec = dict(header_of(frames)["tensors"][0], shape=[3, 3])
    error = rejected(codec, with_header(frames, tensors=[spec]))
    assert (error.sender, error.field) == ("w0", "tensors[x].nbytes")
    spec = dict(header_of(frames)["tensors"][0], shape=[2, -3])
    assert rejected(codec, with_header(frames, tensors=[spec])).field == "tensors[x].shape"


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1\xff\x00garbage",  # 0xc1 is never valid msgpack
        b"\xdd\x7f\xff\xff\xff",  # an array claiming 2**31 elements
        b"\xdb\x7f\xff\xff\xff",  # a string claiming 2 GiB
        msgpack.packb({"v": 3}),  # valid msgpack, not an array
        msgpack.packb(7),  # valid msgpack, not an array
        b"\x91" * 5000,  # deep nesting
        b"\x80" + b"\x00" * MAX_HEADER_BYTES,  # over the header size cap
    ],
)
def test_garbage_header_is_rejected_naming_the_peer(codec, garbage):
    error = rejected(codec, [garbage])
    assert (error.sender, error.field) == ("<peer 01>", "header")


def test_array_without_this_runs_secret_or_run_is_a_strangers(codec):
    for header, field in (([1, 2, 3], "secret"), ([], "secret"), ([3, SECRET], "run_id"), ([3, SECRET, "x"], "run_id")):
        error = rejected(codec, [msgpack.packb(header)])
        assert (error.sender, error.field, error.foreign) == ("<peer 01>", field, True)


def test_header_with_a_wrong_field_count_is_rejected_naming_the_fields(codec):
    frames = encoded(codec)
    fields = msgpack.unpackb(frames[0], raw=False)
    for wrong in (fields[:-1], [*fields, 1]):
        error = rejected(codec, [msgpack.packb(wrong)])
        assert (error.sender, error.field, error.foreign) == ("w0", "header", False)
        assert f"{len(wrong)} fields, expected 10: v, secret, run, sender, kind" in str(error)
    assert rejected(codec, with_header(frames, step="3")).field == "step"
    assert rejected(codec, with_header(frames, meta=[1])).field == "meta"


def test_tensor_description_with_a_wrong_field_count_is_rejected(codec):
    frames = encoded(codec, x=torch.ones(2))
    header = msgpack.unpackb(frames[0], raw=False)
    for spec in (header[8][0][:-1], [*header[8][0], "extra"], {"name": "x"}):
        header[8] = [spec]
        error = rejected(codec, [msgpack.packb(header), frames[1]])
        assert (error.sender, error.field) == ("w0", "tensors[0]")
        assert "name, dtype, shape, nbytes, layout" in str(error)


def test_unhashable_dtype_is_rejected_not_crashed(codec):
    frames = encoded(codec, x=torch.ones(2))
    spec = dict(header_of(frames)["tensors"][0], dtype=["float32"])
    assert rejected(codec, with_header(frames, tensors=[spec])).field == "tensors[x].dtype"


def test_map_header_of_an_older_build_of_this_run_is_a_version_mismatch(codec):
    """Schema 2 headers were maps: a peer of this run on an older build is told so; a stranger's map is not."""
    old = {"v": 2, "kind": "train", "run": RUN, "secret": SECRET, "sender": "w0", "epoch": 0, "step": 0,
           "layer": -1, "tensors": [], "meta": {}}
    error = rejected(codec, [msgpack.packb(old)])
    assert (error.sender, error.field, error.foreign) == ("w0", "version", False)
    assert "schema version 2" in str(error)
    for stranger in (dict(old, secret="guess"), dict(old, run="run-0"), {"kind": "gossip"}):
        error = rejected(codec, [msgpack.packb(stranger)])
        assert (error.sender, error.field, error.foreign) == ("<peer 01>", "header", True)


def test_expect_checks_kind_names_dtypes_and_shape_but_not_batch(codec):
    expect = {
        Kind.TRAIN: {"x": TensorSpec("float32", (None, 3)), "y": TensorSpec("int64", (None,))},
        Kind.STOP: {},
    }
    ok = codec.decode(encoded(codec, x=torch.ones(5, 3), y=torch.zeros(5, dtype=torch.int64)), expect)
    assert ok.tensors["x"].shape == (5, 3)
    assert (
        rejected(codec, encoded(codec, x=torch.ones(5, 4), y=torch.zeros(5, dtype=torch.int64)), expect).field
        == "tensors[x].shape"
    )
    assert (
        rejected(codec, encoded(codec, x=torch.ones(5, 3).double(), y=torch.zeros(5, dtype=torch.int64)), expect).field
        == "tensors[x].dtype"
    )
    assert rejected(codec, encoded(codec, x=torch.ones(5, 3)), expect).field == "tensors"
    metrics = codec.encode(Message(Kind.METRICS, "w2"))
    assert rejected(codec, metrics, expect).field == "kind"


def test_encode_refuses_what_the_wire_cannot_carry(codec):
    with pytest.raises(ValueError, match="unsupported dtype"):
        codec.encode(sample_message(z=torch.ones(2, dtype=torch.complex64)))
    with pytest.raises(ValueError, match="plain"):
        codec.encode(Message(Kind.METRICS, "w0", meta={"loss": torch.tensor(1.0)}))
    # the header packer is reused: a failed pack leaves nothing behind in it
    assert codec.decode(codec.encode(Message(Kind.METRICS, "w0", meta={"loss": 1.0}))).meta == {"loss": 1.0}
    with pytest.raises(ValueError, match="sender"):
        codec.encode(Message(Kind.METRICS, ""))
    with pytest.raises(ValueError, match="header"):
        codec.encode(Message(Kind.METRICS, "w0", meta={"blob": ["x" * 1000] * 100}))


# ---------------------------------------------------------------- rejections on a live link


def test_receiver_rejects_garbage_and_stays_usable(link_pair, codec):
    sender, receiver = link_pair
    with zmq.Context.instance().socket(zmq.DEALER) as raw:
        join_plain(raw, SECRET)      # past the handshake: the header check is what refuses it
        raw.connect(receiver.address)
        raw.send_multipart([b"\xc1 not msgpack", b"x"])
        seen = []
        receiver.on_foreign = seen.append
        with pytest.raises(TimeoutError):
            receiver.recv(300)       # garbage is counted and dropped, the wait goes on
        assert receiver.rejected == 1 and seen[0].field == "header" and "<peer" in seen[0].sender
    sender.send(sample_message(x=torch.ones(3)), WAIT_MS)
    assert torch.equal(receiver.recv(WAIT_MS).tensors["x"], torch.ones(3))


def test_oversized_message_on_a_live_link(address, codec):
    with (
        Receiver(address, Codec(RUN, SECRET, max_message_bytes=1000), "w1") as receiver,
        Sender(receiver.address, codec) as sender,
    ):
        sender.send(sample_message(a=torch.ones(150), b=torch.ones(150)), WAIT_MS)
        with pytest.raises(MessageError) as info:
            receiver.recv(WAIT_MS)
        assert (info.value.sender, info.value.field) == ("w0", "size")


def test_stray_process_with_wrong_secret_is_rejected_and_gets_no_credit(link_pair):
    _, receiver = link_pair
    # It knows the handshake password (as a stale peer of a run with one secret per run could not): past the
    # handshake, the codec's secret check is what stops it. Without it: test_stranger_is_refused_in_the_handshake.
    with Sender(receiver.address, Codec(RUN, "old-secret"), window=1, handshake_secret=SECRET) as stray:
        stray.send(sample_message(x=torch.ones(1)), WAIT_MS)
        nothing_arrives_until_rejected(receiver, 1, 500)
        assert receiver.rejected == 1
        with pytest.raises(TimeoutError):
            stray.send(sample_message(x=torch.ones(1)), 200)


@pytest.mark.parametrize("stranger", ["plain zeromq socket", "wrong secret", "raw bytes"])
def test_stranger_is_refused_in_the_handshake(link_pair, stranger):
    """A connection that does not prove the run's secret in the handshake delivers nothing, is counted once in
    `refused` and reported as a foreign rejection; the link goes on working."""
    sender, receiver = link_pair
    sender.send(sample_message(x=torch.zeros(3)), WAIT_MS)   # the sender's own handshake is done
    receiver.recv(WAIT_MS)
    seen = []
    receiver.on_foreign = seen.append
    frames = [b"\xc1 not msgpack", b"x" * 4096]
    if stranger == "raw bytes":
        if not receiver.address.startswith("tcp://"):
            pytest.skip("raw bytes need a tcp port (an ipc socket file takes them the same way)")
        import socket
        host, port = receiver.address.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(bytes(range(256)) * 64)
            time.sleep(0.3)
    else:
        with zmq.Context.instance().socket(zmq.DEALER) as raw:
            raw.setsockopt(zmq.RECONNECT_IVL, -1)      # one attempt, so exactly one refusal to count
            raw.linger = 0
            if stranger == "wrong secret":
                join_plain(raw, "old-secret")
            raw.connect(receiver.address)
            time.sleep(0.3)                            # refused before any frame could be queued
            with contextlib.suppress(zmq.Again):
                raw.send_multipart(frames, zmq.NOBLOCK)
    # Within 2 s although the last recv asked for WAIT_MS: the audit runs every AUDIT_S of real time (it once
    # waited a whole earlier timeout, 5 s here, after a recv that returned at once).
    deadline = time.monotonic() + 2
    while not seen and time.monotonic() < deadline:
        with pytest.raises(TimeoutError):
            receiver.recv(250)
    assert receiver.refused == 1 and receiver.rejected == 0
    assert len(seen) == 1 and seen[0].foreign and seen[0].field == "handshake"
    sender.send(sample_message(x=torch.ones(3)), WAIT_MS)
    assert torch.equal(receiver.recv(WAIT_MS).tensors["x"], torch.ones(3))


# ---------------------------------------------------------------- backpressure and timeouts


def test_window_blocks_third_send_until_receiver_consumes(link_pair):
    sender, receiver = link_pair
    for step in range(2):
        sender.send(Message(Kind.TRAIN, "w0", step=step, tensors={"x": torch.full((1000,), step)}), WAIT_MS)
    third = Message(Kind.TRAIN, "w0", step=2, tensors={"x": torch.full((1000,), 2)})
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="2 of 2"):
        sender.send(third, 200)
    assert time.monotonic() - start >= 0.19
    assert sender.in_flight == 2

    got = []
    consumer = threading.Thread(target=lambda: (time.sleep(0.3), got.append(receiver.recv(WAIT_MS))))
    start = time.monotonic()
    consumer.start()
    sender.send(third, WAIT_MS)  # blocks until the consumer has taken one message
    blocked_for = time.monotonic() - start
    consumer.join()
    assert blocked_for >= 0.25
    assert got[0].step == 0
    assert [receiver.recv(WAIT_MS).step for _ in range(2)] == [1, 2]
    sender.wait_all(WAIT_MS)
    assert sender.in_flight == 0


def test_recv_times_out(link_pair):
    _, receiver = link_pair
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="no message"):
        receiver.recv(100)
    assert 0.09 <= time.monotonic() - start < 2


def test_wait_all_times_out_while_unconsumed(link_pair):
    sender, _ = link_pair
    sender.send(sample_message(), WAIT_MS)
    with pytest.raises(TimeoutError, match="unconsumed"):
        sender.wait_all(100)


def test_many_senders_have_separate_windows(address, codec):
    with (
        Receiver(address, codec, "coordinator", window=1) as receiver,
        Sender(receiver.address, codec, window=1) as a,
        Sender(receiver.address, codec, window=1) as b,
    ):
        a.send(Message(Kind.METRICS, "a"), WAIT_MS)
        b.send(Message(Kind.METRICS, "b"), WAIT_MS)
        first = receiver.recv(WAIT_MS).sender
        credited, waiting = (a, b) if first == "a" else (b, a)
        credited.send(Message(Kind.HEARTBEAT, first), WAIT_MS)  # its credit came back to it alone
        with pytest.raises(TimeoutError):
            waiting.send(Message(Kind.HEARTBEAT, "other"), 200)
        assert {receiver.recv(WAIT_MS).sender for _ in range(2)} == {"a", "b"}


# ---------------------------------------------------------------- addresses and lifecycle


@pytest.mark.parametrize("bad", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555", "udp://x"])
def test_receiver_refuses_non_loopback_binds(codec, bad):
    with pytest.raises(ValueError, match="address|loopback"):
        Receiver(bad, codec, "w1")


def test_ipc_path_too_long_is_refused():
    with pytest.raises(ValueError, match="tcp://"):
        ipc_address("x" * 120, "/tmp")


def test_ipc_address_defaults_to_a_private_temp_dir():
    address = ipc_address("w0")
    directory = address.removeprefix("ipc://").rsplit("/", 1)[0]
    try:
        assert address.startswith("ipc:///") and "auglocal-" in directory
    finally:
        shutil.rmtree(directory)


def test_close_is_idempotent_and_context_managed(address, codec):
    with Receiver(address, codec, "w1") as receiver, Sender(receiver.address, codec) as sender:
        pass
    assert sender.socket.closed
    assert receiver.socket.closed
    receiver.close()
    assert receiver.socket.closed


# ---------------------------------------------------------------- memory layouts and activation dtypes


def _address(t: torch.Tensor | memoryview | bytearray) -> int:
    return t.data_ptr() if isinstance(t, torch.Tensor) else torch.frombuffer(t, dtype=torch.uint8).data_ptr()


def channels_last_activation(dtype=torch.float32, shape=(8, 16, 12, 12)) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channels_last_crosses_the_codec_without_a_conversion_copy(codec, dtype):
    """The sender's frame is the tensor's own storage; the receiver's tensor is a view on the received buffer,
    laid out channels_last with the sender's strides."""
    h = channels_last_activation(dtype)
    frames = codec.encode(sample_message(h=h))
    assert header_of(frames)["tensors"][0]["layout"] == "channels_last"
    assert _address(frames[1]) == h.data_ptr(), "the sender copied the activation"
    received = [frames[0], bytearray(frames[1])]          # a writable buffer, as a ZeroMQ frame is
    got = codec.decode(received).tensors["h"]
    assert got.data_ptr() == _address(received[1]), "the receiver copied the activation"
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert got.stride() == h.stride() and got.dtype == dtype
    assert torch.equal(got, h)


def test_channels_last_over_a_socket_keeps_layout_and_values(link_pair):
    sender, receiver = link_pair
    h = channels_last_activation(shape=(32, 16, 16, 16))   # above pyzmq's copy threshold: a zero-copy frame
    sender.send(sample_message(h=h, y=torch.arange(32)), WAIT_MS)
    got = receiver.recv(WAIT_MS).tensors
    assert got["h"].is_contiguous(memory_format=torch.channels_last) and got["h"].stride() == h.stride()
    assert torch.equal(got["h"], h) and torch.equal(got["y"], torch.arange(32))


def test_layouts_of_edge_shapes_round_trip(codec):
    """Ambiguous shapes (C = 1, H = W = 1, an empty batch: row-major and channels_last at once, so sent as
    row-major, the same bytes) and a non-dense 4-D slice all arrive equal; a tensor that is neither row-major
    nor channels_last is sent row-major (the one case that copies)."""
    cl = torch.channels_last
    tensors = {
        "c1": torch.randn(4, 1, 5, 5).contiguous(memory_format=cl),
        "hw1": torch.randn(4, 6, 1, 1).contiguous(memory_format=cl),
        "empty": torch.empty(0, 3, 4, 4, memory_format=cl),
        "sliced": torch.randn(4, 6, 8, 8).contiguous(memory_format=cl)[:, ::2],
        "nchw": torch.randn(2, 3, 4, 4),
    }
    frames = codec.encode(sample_message(**tensors))
    layouts = {s["name"]: s["layout"] for s in header_of(frames)["tensors"]}
    assert layouts == {"c1": "contiguous", "hw1": "contiguous", "empty": "contiguous", "sliced": "contiguous",
                       "nchw": "contiguous"}
    got = codec.decode([frames[0], *(bytearray(f) for f in frames[1:])]).tensors
    assert_same_tensors(got, tensors)
    assert got["c1"].is_contiguous(memory_format=cl) and got["hw1"].is_contiguous(memory_format=cl)


@pytest.mark.parametrize("layout, shape", [("nhwc", [2, 3, 4, 4]), ("channels_last", [2, 48]), (None, [2, 3, 4, 4]),
                                           (["channels_last"], [2, 3, 4, 4])])
def test_bad_layout_is_rejected_naming_the_field(codec, layout, shape):
    frames = encoded(codec, x=torch.ones(2, 3, 4, 4))
    spec = dict(header_of(frames)["tensors"][0], layout=layout, shape=shape)
    error = rejected(codec, with_header(frames, tensors=[spec]))
    assert (error.sender, error.field) == ("w0", "tensors[x].layout")
    assert "channels_last" in error.detail and "contiguous" in error.detail


def test_spec_without_layout_is_rejected(codec):
    frames = encoded(codec, x=torch.ones(2, 3, 4, 4))
    spec = {k: v for k, v in header_of(frames)["tensors"][0].items() if k != "layout"}
    error = rejected(codec, with_header(frames, tensors=[spec]))
    assert error.field == "tensors[0]" and "layout" in error.detail


def test_half_precision_activations_travel_in_half_the_bytes(codec):
    """bf16/fp16 activations are sent as they are: the frame is half the fp32 one, the dtype is kept and checked."""
    h32 = channels_last_activation()
    sizes = {}
    for dtype, name in ((torch.float32, "float32"), (torch.bfloat16, "bfloat16"), (torch.float16, "float16")):
        frames = codec.encode(sample_message(h=h32.to(dtype)))
        sizes[name] = frames[1].nbytes
        got = codec.decode(frames, {Kind.TRAIN: {"h": TensorSpec(name, (None, 16, 12, 12))}}).tensors["h"]
        assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert sizes["bfloat16"] == sizes["float16"] == sizes["float32"] // 2
    frames = codec.encode(sample_message(h=h32))
    error = rejected(codec, frames, {Kind.TRAIN: {"h": TensorSpec("bfloat16", (None, 16, 12, 12))}})
    assert error.field == "tensors[h].dtype"

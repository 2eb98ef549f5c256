"""The transport's per-message fast paths keep every check: cached credits, sends before a peer, queued recvs."""

import shutil
import tempfile
import threading
import time

import pytest
import torch
import zmq
from auglocal.workers.links.zap import serve_plain
from auglocal.workers.links.zmq_link import Receiver, Sender, ipc_address, tcp_address
from auglocal.workers.wire.messages import Codec, Kind, Message, MessageError

RUN, SECRET = "run-1", "s3cret"
WAIT_MS = 5000


@pytest.fixture
def address():
    directory = tempfile.mkdtemp(prefix="al-")
    yield ipc_address("link", directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def fake_receiver():
    """A bare ROUTER playing the receiver, a Sender (window 1) connected to it, and a valid credit for the fake
    to send back. Over tcp: credit messages exist only where there is no credit pipe (an ipc link's credits
    come through one, tests/workers/test_credit_pipe.py)."""
    codec = Codec(RUN, SECRET)
    fake = zmq.Context.instance().socket(zmq.ROUTER)
    serve_plain(fake, zmq.Context.instance(), codec.secret)
    fake.bind(tcp_address())
    address = fake.getsockopt(zmq.LAST_ENDPOINT).decode()
    try:
        with Sender(address, codec, window=1) as sender:
            (valid,) = codec.encode(Message(Kind.CREDIT, "w1"))
            yield fake, sender, valid
    finally:
        fake.close(linger=0)


def train(step: int) -> Message:
    return Message(Kind.TRAIN, "w0", step=step, tensors={"x": torch.full((4096,), float(step))})


def test_a_forged_credit_after_valid_ones_is_still_rejected(fake_receiver):
    """Credits equal to a validated one skip decoding; any other bytes are decoded and checked in full."""
    fake, sender, valid = fake_receiver
    (forged,) = Codec(RUN, "old-secret").encode(Message(Kind.CREDIT, "w1"))
    for step in range(3):          # the second and third send each collect a (cached) valid credit
        sender.send(train(step), WAIT_MS)
        identity, *_ = fake.recv_multipart()
        fake.send_multipart([identity, valid])
    sender.wait_all(WAIT_MS)
    sender.send(train(3), WAIT_MS)
    identity, *_ = fake.recv_multipart()
    fake.send_multipart([identity, forged])
    with pytest.raises(MessageError) as info:
        sender.wait_all(WAIT_MS)
    assert info.value.field == "secret"


def test_sends_before_the_receiver_binds_are_delivered_and_still_windowed(address):
    """ZeroMQ queues on a connected DEALER before its peer exists; the credit window still bounds it."""
    codec = Codec(RUN, SECRET)
    with Sender(address, codec, window=2) as sender:
        sender.send(train(0), WAIT_MS)
        sender.send(train(1), WAIT_MS)
        with pytest.raises(TimeoutError, match="2 of 2"):
            sender.send(train(2), 200)
        got = []

        def bind_late() -> None:
            time.sleep(0.3)
            with Receiver(address, codec, "w1", window=2) as receiver:
                got.extend(receiver.recv(WAIT_MS) for _ in range(3))
                time.sleep(0.2)              # let the credits leave before closing

        thread = threading.Thread(target=bind_late)
        thread.start()
        sender.send(train(2), WAIT_MS)       # waits for the late receiver's first credit
        thread.join()
        assert [m.step for m in got] == [0, 1, 2]
        assert torch.equal(got[2].tensors["x"], train(2).tensors["x"])


def test_queued_messages_are_received_in_order_each_with_its_credit(address):
    codec = Codec(RUN, SECRET)
    with Receiver(address, codec, "w1", window=3) as receiver, Sender(address, codec, window=3) as sender:
        for step in range(3):
            sender.send(train(step), WAIT_MS)
        time.sleep(0.2)                      # all three queued: recv takes its fast path
        assert [receiver.recv(WAIT_MS).step for _ in range(3)] == [0, 1, 2]
        sender.wait_all(WAIT_MS)
        assert sender.in_flight == 0
        with pytest.raises(ValueError, match="timeout_ms"):
            receiver.recv(-1)


def test_a_credit_with_extra_frames_is_read_whole_and_refused(fake_receiver):
    """Credits are read frame by frame (Frame.more): a valid credit header followed by another frame is not a
    credit, and the trailing frame is not left behind to be mistaken for the next one."""
    fake, sender, valid = fake_receiver
    sender.send(train(0), WAIT_MS)
    identity, *_ = fake.recv_multipart()
    fake.send_multipart([identity, valid, valid])
    with pytest.raises(MessageError) as info:
        sender.wait_all(WAIT_MS)
    assert info.value.field == "frames" and sender.in_flight == 1
    fake.send_multipart([identity, valid])
    sender.wait_all(WAIT_MS)          # the next, well-formed credit counts
    assert sender.in_flight == 0

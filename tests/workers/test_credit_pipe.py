"""Credits of ipc:// links through a named pipe (workers/links/credit_pipe.py): the window holds, nothing comes back on
the socket, senders that left cost nothing, and a peer's identity never chooses a path."""

import os
import shutil
import stat
import tempfile
import time

import pytest
import torch
import zmq
from auglocal.workers.links.credit_pipe import CreditPipes, pipe_path, token_of
from auglocal.workers.links.zap import join_plain, serve_plain
from auglocal.workers.links.zmq_link import Receiver, Sender, ipc_address
from auglocal.workers.wire.messages import Codec, Kind, Message

RUN, SECRET = "run-1", "s3cret"
WAIT_MS = 5000
CODEC = Codec(RUN, SECRET)


@pytest.fixture
def address():
    directory = tempfile.mkdtemp(prefix="al-")
    yield ipc_address("link", directory)
    shutil.rmtree(directory, ignore_errors=True)


def train(step: int, sender: str = "w0") -> Message:
    return Message(Kind.TRAIN, sender, step=step, tensors={"x": torch.full((64,), float(step))})


def socket_is_silent(sender: Sender) -> bool:
    return not sender.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN


def test_window_bounds_in_flight_and_credits_come_through_the_pipe_only(address):
    with Receiver(address, CODEC, "w1", window=2) as receiver, Sender(address, CODEC, window=2) as sender:
        path = sender.credit_pipe_path
        assert path == pipe_path(receiver.address.removeprefix("ipc://"), path.split(".")[-2])
        assert stat.S_ISFIFO(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        sender.send(train(0), WAIT_MS)
        sender.send(train(1), WAIT_MS)
        with pytest.raises(TimeoutError, match="2 of 2"):    # the receiver is stalled: window + 1 waits
            sender.send(train(2), 200)
        assert sender.in_flight == 2
        assert receiver.recv(WAIT_MS).step == 0
        sender.send(train(2), WAIT_MS)                       # the pipe's credit made room
        assert [receiver.recv(WAIT_MS).step for _ in range(2)] == [1, 2]
        sender.wait_all(WAIT_MS)
        assert sender.in_flight == 0
        time.sleep(0.05)
        assert socket_is_silent(sender)                      # no credit message was ever sent back
    assert not os.path.exists(path)                          # close removes the pipe


def test_several_senders_each_with_its_own_pipe_and_window(address):
    with Receiver(address, CODEC, "coordinator", window=2) as receiver:
        senders = [Sender(address, CODEC, window=2) for _ in range(3)]
        try:
            assert len({s.credit_pipe_path for s in senders}) == 3
            for i, sender in enumerate(senders):
                sender.send(train(0, f"s{i}"), WAIT_MS)
                sender.send(train(1, f"s{i}"), WAIT_MS)
            got = [receiver.recv(WAIT_MS).sender for _ in range(2)]
            sent = 6
            for i, sender in enumerate(senders):
                if f"s{i}" in got:
                    sender.send(train(2, f"s{i}"), 0)       # its own credit made room, at once
                    sent += 1
                else:
                    with pytest.raises(TimeoutError):       # another sender's credit is not its
                        sender.send(train(2, f"s{i}"), 0)
            for _ in range(sent - 2):
                receiver.recv(WAIT_MS)
            for sender in senders:
                sender.wait_all(WAIT_MS)
            assert receiver.open_credit_pipes == 3
        finally:
            for sender in senders:
                sender.close()


def test_a_sender_that_left_costs_the_receiver_no_error_and_no_descriptor(address):
    with Receiver(address, CODEC, "w1", window=3) as receiver:
        with Sender(address, CODEC, window=3) as sender:
            for step in range(3):
                sender.send(train(step), WAIT_MS)
            assert receiver.recv(WAIT_MS).step == 0           # its pipe is now open in the receiver
            assert receiver.open_credit_pipes == 1
        assert receiver.recv(WAIT_MS).step == 1               # the reader is gone: EPIPE, the pipe is dropped
        assert receiver.open_credit_pipes == 0
        assert receiver.recv(WAIT_MS).step == 2               # its pipe is gone too: ENOENT, no credit, no error
        assert receiver.open_credit_pipes == 0


def test_a_departed_sender_is_forgotten_when_a_new_one_arrives(address):
    with Receiver(address, CODEC, "w1") as receiver:
        with Sender(address, CODEC) as first:                 # e.g. a worker before a relink
            first.send(train(0), WAIT_MS)
            receiver.recv(WAIT_MS)
            first.wait_all(WAIT_MS)
        assert receiver.open_credit_pipes == 1                # nothing told the receiver yet
        with Sender(address, CODEC) as second:                # the relinked worker: a new token, a new pipe
            second.send(train(1), WAIT_MS)
            receiver.recv(WAIT_MS)
            second.wait_all(WAIT_MS)
            assert receiver.open_credit_pipes == 1


def test_a_pipe_left_by_a_killed_sender_gets_no_credit_and_no_error(address):
    """A sender killed outright leaves its FIFO without a reader: opening it for writing fails with ENXIO."""
    with Receiver(address, CODEC, "w1") as receiver, zmq.Context.instance().socket(zmq.DEALER) as ghost:
        identity = b"fifo:" + b"0123456789abcdef"
        os.mkfifo(pipe_path(receiver.address.removeprefix("ipc://"), "0123456789abcdef"), 0o600)
        ghost.setsockopt(zmq.ROUTING_ID, identity)
        join_plain(ghost, CODEC.secret)
        ghost.connect(address)
        ghost.send_multipart(CODEC.encode(train(0)))
        assert receiver.recv(WAIT_MS).step == 0
        assert receiver.open_credit_pipes == 0
        assert not ghost.poll(100)                            # and no credit message instead


@pytest.mark.parametrize("identity", [
    b"fifo:../../x", b"fifo:../../../../../tmp/xy", b"fifo:0123456789ABCDEF", b"fifo:0123456789abcde",
    b"fifo:0123456789abcdef0", b"FIFO:0123456789abcdef", b"fifx:0123456789abcdef", b"fifo:0123456789abcde/",
    b"fifo:0123456789abcde\x00", b"xfifo:0123456789abcde",
])
def test_a_malformed_pipe_identity_gets_a_credit_message_and_opens_no_path(address, identity):
    with Receiver(address, CODEC, "w1") as receiver, zmq.Context.instance().socket(zmq.DEALER) as peer:
        assert token_of(identity) is None
        # A pipe where a careless receiver would look (socket path + "." + the identity's tail + ".credits").
        tail = identity[5:].decode("latin-1")
        bait = pipe_path(receiver.address.removeprefix("ipc://"), tail)
        made = "/" not in tail and "\x00" not in tail
        if made:
            os.mkfifo(bait, 0o600)
            reader = os.open(bait, os.O_RDONLY | os.O_NONBLOCK)
        peer.setsockopt(zmq.ROUTING_ID, identity)
        join_plain(peer, CODEC.secret)
        peer.connect(address)
        peer.send_multipart(CODEC.encode(train(0)))
        assert receiver.recv(WAIT_MS).step == 0
        assert peer.poll(WAIT_MS)
        (credit,) = peer.recv_multipart()
        assert CODEC.decode([credit]).kind == Kind.CREDIT
        assert receiver.open_credit_pipes == 0
        if made:
            assert os.read(reader, 16) == b""              # no byte, and no writer holds the bait open
            os.close(reader)


def test_token_of_accepts_exactly_the_pipe_form():
    assert token_of(b"fifo:0123456789abcdef") == "0123456789abcdef"
    assert token_of(b"\x00\x80\x00\x00\x01") is None          # ZeroMQ's own generated identities


def test_credit_messages_on_a_piped_senders_socket_are_not_credits(address):
    """Only the pipe carries credits: a message on the socket, even a valid credit, counts for nothing."""
    fake = zmq.Context.instance().socket(zmq.ROUTER)
    serve_plain(fake, zmq.Context.instance(), CODEC.secret)
    fake.bind(address)
    try:
        with Sender(address, CODEC, window=1) as sender:
            sender.send(train(0), WAIT_MS)
            identity, *_ = fake.recv_multipart()
            assert identity.startswith(b"fifo:")
            (valid,) = CODEC.encode(Message(Kind.CREDIT, "w1"))
            for frames in ([identity, valid], [identity, b"garbage"], [identity, valid, valid]):
                fake.send_multipart(frames)
            with pytest.raises(TimeoutError, match="unconsumed"):
                sender.wait_all(200)
            assert sender.in_flight == 1
            CreditPipes(address.removeprefix("ipc://")).give(identity)
            sender.wait_all(WAIT_MS)
            assert sender.in_flight == 0
    finally:
        fake.close(linger=0)


def test_waiting_on_the_pipe_is_not_a_spin_even_after_the_receiver_closed(address):
    """The sender holds a writer of its own pipe: a closed receiver's write end never makes poll return at once."""
    with Sender(address, CODEC, window=1) as sender:
        with Receiver(address, CODEC, "w1", window=1) as receiver:
            sender.send(train(0), WAIT_MS)
            receiver.recv(WAIT_MS)
            sender.send(train(1), WAIT_MS)
        cpu = time.process_time()
        with pytest.raises(TimeoutError):
            sender.send(train(2), 400)
        assert time.process_time() - cpu < 0.1


def test_a_sender_to_a_missing_folder_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="credit pipe"):
        Sender(f"ipc://{tmp_path}/gone/link.sock", CODEC)

"""Out-of-band links (auglocal.workers.links.paths.oob_link) with an in-process tensor path: what they promise beyond
the contract.

A `ShelfPath` moves tensor bytes through a shared list in this process and records every call, so the tests
see exactly when a receive happens and when a sent buffer is released, without a process group.
"""

import shutil
import tempfile

import msgpack
import pytest
import torch
from auglocal.workers.links.paths.oob_link import OobReceiver, OobSender, as_byte_tensor
from auglocal.workers.links.zmq_link import Sender, ipc_address
from auglocal.workers.wire.messages import Codec, Kind, Message, MessageError

from tests.workers.wire_headers import header_of, packed_header

WAIT_MS = 5000


class ShelfPath:
    """Bytes go onto a shelf on send and come off it on receive; calls are logged."""

    device = torch.device("cpu")

    def __init__(self, shelf: list, log: list):
        self.shelf, self.log = shelf, log

    def warm_send(self):
        self.log.append("warm_send")

    def warm_recv(self):
        self.log.append("warm_recv")

    def prepare(self, frames):
        return {"path": "shelf"}

    def send(self, frames):
        tensors = tuple(as_byte_tensor(f).clone() for f in frames)
        self.shelf.append(tensors)
        self.log.append(("send", len(tensors)))
        return ("pending", len(self.shelf))

    def complete(self, pending):
        self.log.append(("complete", pending[1]))

    def receive(self, route, sizes, peer):
        self.log.append(("receive", tuple(sizes)))
        tensors = self.shelf.pop(0)
        assert [t.numel() for t in tensors] == list(sizes)
        return list(tensors)


@pytest.fixture
def ends():
    directory = tempfile.mkdtemp(prefix="al-oob-")
    codec, shelf, log = Codec("run", "secret"), [], []
    receiver = OobReceiver(ipc_address("in", directory), codec, "rx", ShelfPath(shelf, log))
    sender = OobSender(receiver.address, codec, ShelfPath(shelf, log))
    yield codec, sender, receiver, log
    sender.close()
    receiver.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_sent_buffers_are_released_only_at_their_credit(ends):
    codec, sender, receiver, log = ends
    for step in range(2):
        sender.send(Message(Kind.TRAIN, "tx", step=step, tensors={"x": torch.full((5,), step)}), WAIT_MS)
    assert not [e for e in log if e[0] == "complete"]   # nothing consumed yet: both buffers still held
    got = receiver.recv(WAIT_MS)
    assert got.step == 0 and torch.equal(got.tensors["x"], torch.zeros(5))
    with pytest.raises(TimeoutError):
        sender.wait_all(200)   # one message still unconsumed
    assert [e for e in log if e[0] == "complete"] == [("complete", 1)]
    assert receiver.recv(WAIT_MS).step == 1
    sender.wait_all(WAIT_MS)
    assert [e for e in log if e[0] == "complete"] == [("complete", 1), ("complete", 2)]


def test_a_strangers_header_costs_no_receive(ends):
    codec, sender, receiver, log = ends
    # Past the handshake (it knows the link's password), so only the header check can stop it.
    with Sender(receiver.address, Codec("run", "wrong-secret"), handshake_secret=codec.secret) as stranger:
        stranger.send(Message(Kind.TRAIN, "intruder", tensors={"x": torch.ones(3)}), WAIT_MS)
        with pytest.raises(TimeoutError):
            receiver.recv(300)
    assert receiver.rejected == 1
    assert not [e for e in log if e[0] == "receive"]


def test_a_peer_without_a_route_frame_or_with_an_oversized_header_fails_before_any_receive(ends):
    codec, sender, receiver, log = ends
    with Sender(receiver.address, codec) as peer:   # a plain ZeroMQ sender of this run: tensor frames, no route
        peer.send(Message(Kind.TRAIN, "plain", tensors={"x": torch.ones(3)}), WAIT_MS)
        with pytest.raises(MessageError, match="route frame"):
            receiver.recv(WAIT_MS)
        header = header_of(codec.encode(Message(Kind.TRAIN, "big", tensors={"x": torch.ones(3)})))
        header["tensors"][0].update(shape=[1 << 29], nbytes=4 << 29)   # 2 GiB: above the codec's 1 GiB limit
        peer.send_raw([packed_header(header), msgpack.packb({"path": "shelf"})])
        with pytest.raises(MessageError, match="exceed the limit"):
            receiver.recv(WAIT_MS)
    assert not [e for e in log if e[0] == "receive"]

"""Each received message is checked once per layer: the wire checks (`Codec.read_header`, inside `decode`) once,
then the protocol's (`protocol.validate`: route, meta, tensors) once, on every receive path. A malformed meta
passes the wire (it is a map) and is refused by the protocol, through each receiver."""

import shutil
import tempfile

import pytest
import torch
from auglocal.workers.links.memlink import MemoryLink
from auglocal.workers.links.paths.oob_link import OobReceiver, OobSender
from auglocal.workers.links.threadlink import ThreadLink
from auglocal.workers.links.zmq_link import Receiver, Sender, ipc_address
from auglocal.workers.wire import protocol
from auglocal.workers.wire.messages import Codec, Kind, Message, MessageError
from auglocal.workers.wire.protocol import Route

from tests.workers.test_oob_link import ShelfPath

WAIT_MS = 5000
GOOD = {"g": 3}
BAD = {"g": "three"}     # a map, so the wire takes it; not an int, so the protocol refuses it


def train(meta) -> Message:
    return Message(Kind.TRAIN, "w0", tensors={"h": torch.ones(2, 3), "y": torch.zeros(2, dtype=torch.int64)},
                   meta=dict(meta))


@pytest.fixture
def counts(monkeypatch):
    seen = {"wire": 0, "protocol": 0}
    read_header, validate = Codec.read_header, protocol.validate

    def counted_read_header(self, *args, **kwargs):
        seen["wire"] += 1
        return read_header(self, *args, **kwargs)

    def counted_validate(*args, **kwargs):
        seen["protocol"] += 1
        return validate(*args, **kwargs)

    monkeypatch.setattr(Codec, "read_header", counted_read_header)
    monkeypatch.setattr(protocol, "validate", counted_validate)
    return seen


@pytest.fixture
def folder():
    directory = tempfile.mkdtemp(prefix="al-once-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def ends(kind: str, codec: Codec, folder: str):
    """(send, recv, close, wire checks per message) for one receive path."""
    if kind in ("memory", "thread", "thread-raw"):
        link = MemoryLink(codec) if kind == "memory" else ThreadLink(codec, "inbox")
        sender = link.sender()
        if kind == "thread-raw":
            return (lambda m: sender.send_raw(codec.encode(m))), link.recv, lambda: None, 1
        return (lambda m: sender.send(m, WAIT_MS)), link.recv, lambda: None, 0 if kind == "thread" else 1
    if kind == "zmq":
        receiver = Receiver(ipc_address("in", folder), codec, "rx")
        sender = Sender(receiver.address, codec)
    else:
        shelf, log = [], []
        receiver = OobReceiver(ipc_address("in", folder), codec, "rx", ShelfPath(shelf, log))
        sender = OobSender(receiver.address, codec, ShelfPath(shelf, log))

    def close():
        sender.close()
        receiver.close()
    return (lambda m: sender.send(m, WAIT_MS)), receiver.recv, close, 1


@pytest.mark.parametrize("kind", ["zmq", "oob", "memory", "thread", "thread-raw"])
def test_each_receive_path_checks_wire_and_protocol_once_and_refuses_a_malformed_meta(kind, counts, folder):
    send, recv, close, wire_checks = ends(kind, Codec("run", "secret"), folder)
    try:
        send(train(GOOD))
        message = protocol.validate(recv(WAIT_MS), Route.DOWN)
        assert message.meta == protocol.TrainMeta(3)
        assert counts == {"wire": wire_checks, "protocol": 1}
        send(train(BAD))
        with pytest.raises(MessageError) as info:
            protocol.validate(recv(WAIT_MS), Route.DOWN)
        assert (info.value.field, info.value.foreign) == ("meta.g", False)
        assert counts == {"wire": 2 * wire_checks, "protocol": 2}
    finally:
        close()

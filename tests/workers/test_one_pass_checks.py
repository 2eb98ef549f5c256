"""The per-message checks made cheap without losing one: the protocol's compiled one-pass check accepts exactly
what the table's general checks accept (and a rejection still names the field), the codec's packed header
prefix still proves the run, and a worker's empty control inbox is looked at without raising."""

from __future__ import annotations

import copy
import dataclasses

import msgpack
import pytest
import torch
from auglocal.workers.links.zmq_link import Receiver, Sender, ipc_address
from auglocal.workers.wire import protocol
from auglocal.workers.wire.messages import Codec, Kind, Message, MessageError
from auglocal.workers.wire.protocol import PROTOCOL, InboxSchema, Route, activation_spec

SCHEMA = InboxSchema(activation=activation_spec((3, 2)), image=activation_spec((3, 2)))
VALUES = {int: 3, float: 0.5, str: "x", bool: True, "dict": {"1": 0.25}, "counts": {"1": 2}}


def plain_meta(kind: Kind) -> dict:
    """A valid raw (wire) meta for `kind`: every field of its record with a value of its type."""
    out = {}
    for f in dataclasses.fields(PROTOCOL[kind].meta):
        hint = protocol._hints(PROTOCOL[kind].meta)[f.name]
        if hint in VALUES:
            out[f.name] = VALUES[hint]
        elif "float" in str(hint) and "dict" in str(hint):
            out[f.name] = VALUES["dict"]
        elif "dict" in str(hint):
            out[f.name] = VALUES["counts"]
        else:                                  # int | None
            out[f.name] = None
    return out


def tensors_for(kind: Kind, batch: int = 4) -> dict:
    made = {}
    for slot in PROTOCOL[kind].tensors:
        spec = SCHEMA.spec(slot.role)
        shape = [batch if d is None else d for d in spec.shape]
        made[slot.name] = torch.zeros(shape, dtype=getattr(torch, spec.dtype))
    return made


def variants(kind: Kind):
    """Valid messages of `kind` and many ways to get each part wrong."""
    meta, tensors = plain_meta(kind), tensors_for(kind)
    yield meta, tensors
    yield {k: v for k, v in meta.items() if k in {f.name for f in dataclasses.fields(PROTOCOL[kind].meta)
                                                    if f.default is dataclasses.MISSING}}, tensors
    yield {**meta, "surplus": 1}, tensors
    for name in meta:
        yield {**meta, name: object.__class__}, tensors            # not a plain value of any type
        yield {**meta, name: "text" if meta[name] != "x" else 7}, tensors
        yield {k: v for k, v in meta.items() if k != name}, tensors
    yield [1, 2], tensors
    yield meta, {**tensors, "extra": torch.zeros(4)}
    for name, t in tensors.items():
        yield meta, {k: v for k, v in tensors.items() if k != name}
        yield meta, {**tensors, name: t.double() if t.dtype != torch.float64 else t.float()}
        yield meta, {**tensors, name: t[:2]}                         # another batch size than the rest
        yield meta, {**tensors, name: t.reshape(-1)}                 # fewer dims
        if t.dim() > 1:
            yield meta, {**tensors, name: torch.zeros(4, *[d + 1 for d in t.shape[1:]], dtype=t.dtype)}


def outcome(check, message: Message, route: Route, schema):
    try:
        got = check(message, route, schema)
    except MessageError as err:
        return "error", str(err)
    return "ok", got.meta


@pytest.mark.parametrize("schema", [None, SCHEMA], ids=["no-schema", "schema"])
@pytest.mark.parametrize("route", list(Route))
@pytest.mark.parametrize("kind", [k for k in Kind if k in PROTOCOL])
def test_the_compiled_check_accepts_exactly_what_the_table_accepts(kind, route, schema):
    cases = 0
    for meta, tensors in variants(kind):
        message = Message(kind, "worker0", tensors=dict(tensors), meta=copy.deepcopy(meta))
        fast = outcome(protocol.validate, copy.copy(message), route, schema)
        fast_again = outcome(protocol.validate, copy.copy(message), route, schema)   # compiled by now
        slow = outcome(protocol._validate_slowly, copy.copy(message), route, schema)
        assert fast == fast_again == slow, (meta, {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()})
        cases += 1
    assert cases >= 4


def test_a_typed_record_passes_and_another_record_is_refused():
    message = Message(Kind.TRAIN, "w", tensors=tensors_for(Kind.TRAIN), meta=protocol.TrainMeta(1, 1))
    assert protocol.validate(message, Route.DOWN, SCHEMA).meta == protocol.TrainMeta(1, 1)
    wrong = Message(Kind.TRAIN, "w", tensors=tensors_for(Kind.TRAIN), meta=protocol.SeqMeta(1))
    with pytest.raises(MessageError, match="got a SeqMeta, expected TrainMeta"):
        protocol.validate(wrong, Route.DOWN, SCHEMA)


def test_a_header_packed_another_way_still_proves_the_run_and_a_wrong_secret_is_a_stranger():
    codec = Codec("run-1", "secret-1")
    frames = codec.encode(Message(Kind.READY, "worker0"))
    header = msgpack.unpackb(frames[0])
    secret = b"secret-1"                                          # as str 8 (0xd9), not fixstr: other bytes
    repacked = (b"\x9a" + msgpack.packb(3) + b"\xd9" + bytes([len(secret)]) + secret + msgpack.packb("run-1")
                + msgpack.packb(header[3:])[1:])
    assert msgpack.unpackb(repacked) == header and repacked[:len(codec._prefix)] != codec._prefix
    assert codec.decode([repacked]).kind is Kind.READY
    for other in (Codec("run-1", "secret-2"), Codec("run-2", "secret-1")):
        with pytest.raises(MessageError) as info:
            other.decode(frames)
        assert info.value.foreign
    header[3] = ""                                                # the sender is still checked after the prefix
    with pytest.raises(MessageError, match="sender"):
        codec.decode([codec._prefix + msgpack.packb(header[3:])[1:]])


def test_an_empty_inbox_is_looked_at_without_raising(tmp_path):
    codec = Codec("run-1", "secret-1")
    with Receiver(ipc_address("control", str(tmp_path)), codec, "w0") as inbox, \
            Sender(inbox.address, codec) as sender:
        assert inbox.ready() is False
        sender.send(Message(Kind.RELEASE, "coordinator"), 1000)
        for _ in range(200):
            if inbox.ready():
                break
            import time
            time.sleep(0.005)
        assert inbox.ready() is True
        assert inbox.recv(0).kind is Kind.RELEASE
        assert inbox.ready() is False

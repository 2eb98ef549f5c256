"""workers/wire/frame_bounds.py: each link's frame bound is the largest frame its own messages have, and the ends a
worker binds carry it as ZMQ_MAXMSGSIZE."""

from __future__ import annotations

import os

import pytest
import torch
import zmq
from auglocal.workers.links.link import Link
from auglocal.workers.links.zmq_link import ipc_address
from auglocal.workers.runtime.worker import WorkerSpec, bind_control, bind_inbox
from auglocal.workers.wire.frame_bounds import (
    CHUNK_BYTES,
    FRAMING_SLACK,
    HEADER_ONLY,
    data_bound,
    inbox_bound,
    results_bound,
    tensor_bytes,
)
from auglocal.workers.wire.messages import DTYPES, MAX_HEADER_BYTES, Codec, Kind, Message, TensorSpec
from auglocal.workers.wire.protocol import InboxSchema, SeqMeta, TrainMeta, activation_spec

CODEC = Codec("run", "s" * 32)
IMAGE = activation_spec((3, 32, 32))


def _tensor(spec: TensorSpec, batch: int) -> torch.Tensor:
    shape = [batch if d is None else d for d in spec.shape]
    return torch.zeros(shape, dtype=DTYPES[spec.dtype])


def _largest_frame(schema: InboxSchema, batch: int) -> int:
    """The largest frame of the data messages a worker with `schema` receives at `batch` (image included)."""
    h, y, x = (_tensor(s, batch) for s in (schema.activation, schema.labels, schema.image))
    messages = [Message(Kind.TRAIN, "worker0", 0, 0, tensors={"h": h, "y": y, "x": x}, meta=TrainMeta(0, 1)),
                Message(Kind.EVAL, "worker0", 0, 0, tensors={"h": h, "y": y}, meta=SeqMeta(2))]
    return max(memoryview(f).nbytes for m in messages for f in CODEC.encode(m))


@pytest.mark.parametrize("shape, dtype, batch", [((64, 32, 32), "float32", 128), ((16, 8, 8), "bfloat16", 8),
                                                 ((512,), "float16", 256), ((3, 32, 32), "float32", 1)])
def test_the_data_bound_is_the_largest_frame_of_the_links_messages(shape, dtype, batch):
    schema = InboxSchema(activation=activation_spec(shape, dtype), image=IMAGE)
    bound = data_bound(schema, batch)
    assert bound == max(MAX_HEADER_BYTES, _largest_frame(schema, batch)) + FRAMING_SLACK


def test_bounds_are_never_below_a_header_and_layer_chunks_fit_the_results_bound():
    tiny = InboxSchema(activation=activation_spec((4,)), image=activation_spec((1, 2, 2)))
    assert data_bound(tiny, 2) == HEADER_ONLY == MAX_HEADER_BYTES + FRAMING_SLACK
    assert results_bound(ship_layers=False) == HEADER_ONLY
    assert results_bound(ship_layers=True) == max(CHUNK_BYTES, MAX_HEADER_BYTES) + FRAMING_SLACK
    assert tensor_bytes(TensorSpec("int64", (None,)), 10) == 80


def test_without_a_schema_or_batch_size_the_codec_limit_stays():
    schema = InboxSchema(activation=IMAGE, image=IMAGE)
    assert data_bound(None, 8) is None
    assert inbox_bound(schema, {}) is None
    assert inbox_bound(schema, {"batch_size": 8}) == data_bound(schema, 8)
    with pytest.raises(ValueError, match="batch_size"):
        data_bound(schema, 0)


def test_a_workers_inbox_and_control_inbox_are_bound_to_their_frames(tmp_path):
    """What bind_inbox and bind_control (worker processes and thread hosts) set on their sockets."""
    schema = InboxSchema(activation=activation_spec((16, 16, 16)), image=activation_spec((3, 16, 16)))
    spec = WorkerSpec(rank=1, modules=[1], config={"batch_size": 8},
                      inbox=Link(ipc_address("w1", str(tmp_path))), outbox=None,
                      results=Link(ipc_address("results", str(tmp_path))), run_id="run", secret=CODEC.secret,
                      out_dir=str(tmp_path), coordinator_pid=os.getpid(), schema=schema,
                      control=Link(ipc_address("c1", str(tmp_path)), 4))
    inbox, control = bind_inbox(spec, CODEC), bind_control(spec, CODEC)
    try:
        assert inbox.socket.getsockopt(zmq.MAXMSGSIZE) == 8 * 16 * 16 * 16 * 4 + FRAMING_SLACK
        assert control.socket.getsockopt(zmq.MAXMSGSIZE) == HEADER_ONLY
    finally:
        inbox.close()
        control.close()


@pytest.mark.parametrize("transport", ["ipc", "tcp", "curve"])
def test_a_full_size_message_passes_its_links_bound(transport, tmp_path):
    """The largest message the schema allows arrives bitwise through a Receiver bound to `data_bound`; on curve
    links each frame arrives wrapped in 33 more bytes, which the framing slack covers."""
    from auglocal.workers.links.curve import CurveKeyPair
    schema = InboxSchema(activation=activation_spec((32, 32, 32)), image=IMAGE)
    batch = 16
    address = ipc_address("w1", str(tmp_path)) if transport == "ipc" else "tcp://127.0.0.1:*"
    server, client = (CurveKeyPair.generate(), CurveKeyPair.generate()) if transport == "curve" else (None, None)
    inbox = Link(address, 2, transport).receiver(CODEC, "w1", curve=server, max_frame=data_bound(schema, batch))
    if inbox.allowed is not None:
        inbox.allowed.allow(client.public)
    link = Link(inbox.address, 2, transport, server_key=server.public.decode() if server else None)
    outbox = link.sender(CODEC, curve=client)
    g = torch.Generator().manual_seed(0)
    tensors = {"h": torch.randn(batch, 32, 32, 32, generator=g), "y": torch.arange(batch),
               "x": torch.randn(batch, 3, 32, 32, generator=g)}
    try:
        outbox.send(Message(Kind.TRAIN, "worker0", 0, 0, tensors=tensors, meta=TrainMeta(0, 1)), 5000)
        got = inbox.recv(10_000)
        assert all(torch.equal(got.tensors[k], v) for k, v in tensors.items())
    finally:
        outbox.close()
        inbox.close()

"""The largest frame each link carries, from the link's own tensor specs: what its Receiver sets ZMQ_MAXMSGSIZE to.

Why: ZeroMQ reads a frame whole before any check of ours runs, and a connection still in its handshake
(workers/links/zap.py) can make a process hold one frame of the socket's ZMQ_MAXMSGSIZE: with the codec's 1 GiB
default, one stranger costs up to 1 GiB per connection. A frame above the bound makes ZeroMQ drop the peer as
soon as the frame's size is read, before buffering it. The bound is a socket option set once at bind, so
the per-message path pays nothing.

What each link carries (workers/wire/protocol.py's table decides, so a new tensor slot is covered without an edit
here):
- a worker's data inbox (route DOWN: train and test batches): each slot's tensor from the receiver's
  `InboxSchema` (activation, labels, image) with the run's batch size as the free batch dim;
- a control inbox (relink, commits, release) and the results inbox: header-only kinds, except layer-file
  chunks of at most `CHUNK_BYTES` when workers ship their layer files (several machines).
Every bound is at least `MAX_HEADER_BYTES` (the header frame travels on every link), plus `FRAMING_SLACK`:
ZeroMQ checks ZMQ_MAXMSGSIZE against the frame as it arrives on the wire, and CURVE wraps each frame in a
MESSAGE command (8 bytes of name, an 8-byte nonce, a flags byte and a 16-byte MAC: 33 bytes), so a bound of
the bare tensor would drop every full-size activation on a curve link.
"""

from __future__ import annotations

import math

from auglocal.workers.wire.messages import DTYPES, MAX_HEADER_BYTES, TensorSpec
from auglocal.workers.wire.protocol import PROTOCOL, InboxSchema, Route

#: the largest piece of a layer file a worker ships in one `layer_file` report (runtime/layer_shipping.py)
CHUNK_BYTES = 4 << 20
#: bytes a transport's framing may add to a frame (CURVE: 33), with a wide margin; a few KiB against MiB-sized bounds
FRAMING_SLACK = 4096
#: the frame bound of a link that carries only headers (control inboxes; results without layer files)
HEADER_ONLY = MAX_HEADER_BYTES + FRAMING_SLACK


def tensor_bytes(spec: TensorSpec, batch_size: int) -> int:
    """Bytes of one tensor of `spec` whose free dims (the batch) are `batch_size`."""
    dims = [batch_size if d is None else d for d in spec.shape]
    return math.prod(dims) * DTYPES[spec.dtype].itemsize


def data_bound(schema: InboxSchema | None, batch_size: int) -> int | None:
    """The largest frame a worker's data inbox receives: its biggest tensor at `batch_size` (at least a header),
    plus the framing slack.

    None without a schema (nothing says what arrives): the Receiver keeps the codec's max_message_bytes."""
    if schema is None:
        return None
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    slots = {slot.role for t in PROTOCOL.values() if t.route is Route.DOWN for slot in t.tensors}
    return max(MAX_HEADER_BYTES, *(tensor_bytes(schema.spec(role), batch_size) for role in slots)) + FRAMING_SLACK


def inbox_bound(schema: InboxSchema | None, config: dict) -> int | None:
    """`data_bound` of a worker's inbox, its batch size taken from the worker's run config (`RunConfig.to_dict`);
    None without a schema or batch size."""
    batch_size = config.get("batch_size")
    return None if batch_size is None else data_bound(schema, batch_size)


def results_bound(ship_layers: bool) -> int:
    """The largest frame the coordinator's results inbox receives: a header, or a layer-file chunk when the
    workers ship their layer files over it (workers/runtime/layer_shipping.py)."""
    return max(MAX_HEADER_BYTES, CHUNK_BYTES) + FRAMING_SLACK if ship_layers else HEADER_ONLY

"""Edit a message's header frame by field name in tests (the wire form is a msgpack array, workers/wire/messages.py)."""

import msgpack
from auglocal.workers.wire.messages import HEADER_FIELDS, TENSOR_FIELDS


def header_of(frames) -> dict:
    """The header of encoded `frames` as a dict by HEADER_FIELDS, each tensor description a dict by TENSOR_FIELDS."""
    header = dict(zip(HEADER_FIELDS, msgpack.unpackb(frames[0], raw=False), strict=True))
    header["tensors"] = [dict(zip(TENSOR_FIELDS, spec, strict=True)) for spec in header["tensors"]]
    return header


def packed_header(header: dict) -> bytes:
    """The wire header for a dict as `header_of` gives it (fields in HEADER_FIELDS order; a tensor description
    missing a field becomes a shorter array)."""
    tensors = [[spec[name] for name in TENSOR_FIELDS if name in spec] for spec in header["tensors"]]
    return msgpack.packb([tensors if name == "tensors" else header[name] for name in HEADER_FIELDS],
                         use_bin_type=True)


def with_header(frames, **changes) -> list:
    """`frames` with header fields replaced by `changes`, the tensor frames unchanged."""
    return [packed_header({**header_of(frames), **changes}), *frames[1:]]

"""Wire format of worker messages: a msgpack header frame plus one raw frame per tensor, validated on receipt.

A message travels as ``[header, tensor_0, tensor_1, ...]``. The header is a msgpack array (never pickle) with
the fields of HEADER_FIELDS in that order: it names the run, carries the run's secret, says who sent it and
what it is, and describes every tensor frame (an array of TENSOR_FIELDS: name, dtype, shape, nbytes, layout).
Arrays, not maps: the header is parsed on every hop, and a fixed field order parses about five times faster
than named keys while every field is still checked (a wrong field count is refused, naming the fields).
Tensor frames are the tensors' raw little-endian bytes in their memory order, sent without copying and
rebuilt on receipt with ``torch.frombuffer`` on the received buffer (the tensor keeps that buffer alive);
layout 'channels_last' (4-D only) rebuilds the NHWC-strided view it was sent as.

Decoding trusts nothing: the header is size-capped before it is parsed and parsed with tight msgpack limits,
and every field, frame count and byte count is checked. Any inconsistency raises `MessageError`, which names
the sender and the offending field, so a truncated, foreign or stale message is never trained on.

The secret is checked before anything else the header says. A message that fails before or at that check
(bytes that are no header, a header without this run's secret or run id) comes from a *stranger*:
`MessageError.foreign` is True and receivers count and drop it. A message that carries the secret but is
inconsistent (unknown kind, bad frames) comes from a peer of this run that misbehaves: a failure of that peer.
The secret is a plaintext per-run token, not a signature: it tells this run's processes from strangers on
the same machine, it does not authenticate against an eavesdropper.
"""

from __future__ import annotations

import hmac
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import msgpack
import torch
from auglocal.workers.wire.frames import (  # noqa: F401 - DTYPES and LAYOUTS are part of the wire's vocabulary here
    _DTYPE_NAMES,
    DTYPES,
    LAYOUTS,
    _dims_ok,
    _frame_bytes,
    _tensor_frame,
    _tensor_from_frame,
)
from auglocal.workers.wire.kinds import _KINDS, Kind  # noqa: F401 - Kind is part of the wire's vocabulary here

SCHEMA_VERSION = 3   # 2: typed kinds, secret checked first, tensor specs carry a layout; 3: arrays, not maps
MAX_HEADER_BYTES = 64 * 1024
MAX_TENSORS = 64
MAX_NDIM = 8
MAX_NAME_CHARS = 128
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30


#: the header array's fields, in wire order. The version and the secret come first so that any later schema
#: can still be recognised, and a stranger refused, before the rest is read.
HEADER_FIELDS = ("v", "secret", "run", "sender", "kind", "epoch", "step", "layer", "tensors", "meta")
#: each tensor description's fields, in wire order
TENSOR_FIELDS = ("name", "dtype", "shape", "nbytes", "layout")
_N_HEADER_FIELDS = len(HEADER_FIELDS)
_ARRAY_HEADER = bytes([0x90 | _N_HEADER_FIELDS])   # msgpack fixarray of the header's fields
_N_TENSOR_FIELDS = len(TENSOR_FIELDS)
_UNPACK_LIMITS = dict(
    raw=False,
    strict_map_key=True,
    use_list=True,
    max_str_len=16 * 1024,
    max_bin_len=0,
    max_ext_len=0,
    max_array_len=4096,
    max_map_len=256,
)


# One msgpack Packer per thread, reused: msgpack.packb builds a fresh Packer (and its buffer) on every call,
# about half the cost of packing a header. Per thread, because packing a Mapping subclass calls back into
# Python, where another thread could take the GIL and interleave its own header into a shared buffer.
_PACKERS = threading.local()


def _pack(value: Any) -> bytes:
    packer = getattr(_PACKERS, "packer", None)
    if packer is None:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(value)   # the buffer is reset after each call, also when packing fails


@dataclass
class Message:
    """One unit on the wire: a kind, its position in training, named CPU tensors and plain metadata.

    ``layer`` is a global layer index or -1 when the message is not about one layer. ``meta`` is the kind's
    typed record (a dataclass of workers/wire/protocol.py) or, on the raw wire level, a dict of plain values
    (int, float, str, bool, None, lists and string-keyed dicts of them), never other objects.
    """

    kind: Kind
    sender: str
    epoch: int = 0
    step: int = 0
    layer: int = -1
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: Any = field(default_factory=dict)


@dataclass(frozen=True)
class TensorSpec:
    """What a receiver expects of one tensor: dtype name and shape, None marking a free dim (the batch)."""

    dtype: str
    shape: tuple[int | None, ...]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"TensorSpec dtype {self.dtype!r} is not one of {list(DTYPES)}")


# Accepted kinds mapped to their expected tensors ({} means none, None means not checked).
Expect = Mapping[Kind, Mapping[str, TensorSpec] | None]


class MessageError(ValueError):
    """A received message was rejected; names who sent it and which field was wrong.

    `foreign` is True when the message does not prove it belongs to this run (no parseable header, no or a
    wrong secret or run id): a stranger's, to be counted and dropped. False: a peer of this run sent it.
    """

    def __init__(self, sender: str, field: str, detail: str, *, foreign: bool = False):
        self.sender = sender
        self.field = field
        self.detail = detail
        self.foreign = foreign
        super().__init__(f"message from {sender!r} rejected, field {field!r}: {detail}")


def _is_int(value: Any) -> bool:
    return type(value) is int


def _plain_meta(meta: Any) -> dict[str, Any]:
    """The wire form of a meta record: a typed dataclass becomes its field dict (shallow: fields are plain)."""
    if is_dataclass(meta) and not isinstance(meta, type):
        return {f.name: getattr(meta, f.name) for f in fields(meta)}
    return meta


class Codec:
    """Encodes and decodes messages for one run; holds the run's identity and the receive size limit.

    Every process of a run builds its Codec from the same ``run_id`` and ``secret``; a message from another
    run (or a stale process of an earlier one) fails decoding. ``max_message_bytes`` bounds the tensor bytes
    of one message in both directions, so a sender finds out before it sends what a receiver would refuse.
    """

    def __init__(self, run_id: str, secret: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        if not run_id or not secret:
            raise ValueError("Codec needs a non-empty run_id and secret (e.g. secrets.token_hex(16) per run)")
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.run_id = run_id
        self.secret = secret
        self.max_message_bytes = max_message_bytes
        self._secret_bytes = secret.encode()
        # The header's first fields are the same in every message of the run: packed once, they open every
        # header this codec encodes, and a received header that opens with them has proven its secret and run.
        self._prefix = _ARRAY_HEADER + _pack(SCHEMA_VERSION) + _pack(secret) + _pack(run_id)

    def encode(self, message: Message, keep_device: bool = False) -> list[bytes | memoryview]:
        """Frames for `message`: header bytes then one zero-copy view per tensor, in the tensors' order.

        `keep_device`: GPU tensors give flat uint8 GPU tensors as frames (see _tensor_frame), not an error.
        """
        if not isinstance(message.kind, Kind):
            raise ValueError(f"message kind must be a Kind, got {message.kind!r}")
        if not message.sender or len(message.sender) > MAX_NAME_CHARS:
            raise ValueError(f"message sender must be 1..{MAX_NAME_CHARS} characters, got {message.sender!r}")
        if len(message.tensors) > MAX_TENSORS:
            raise ValueError(f"a message carries at most {MAX_TENSORS} tensors, got {len(message.tensors)}")
        frames: list[bytes | memoryview] = [b""]   # the header goes first, once the tensors are described
        specs = []
        total = 0
        for name, tensor in message.tensors.items():
            dtype_name = _DTYPE_NAMES.get(tensor.dtype)
            if dtype_name is None:
                raise ValueError(f"tensor {name!r} has unsupported dtype {tensor.dtype}; use one of {list(DTYPES)}")
            shape = list(tensor.shape)
            if not name or len(name) > MAX_NAME_CHARS or len(shape) > MAX_NDIM:
                raise ValueError(f"tensor {name!r}: names are 1..{MAX_NAME_CHARS} characters, at most {MAX_NDIM} dims")
            frame, layout = _tensor_frame(name, tensor, keep_device)
            nbytes = _frame_bytes(frame)
            total += nbytes
            frames.append(frame)
            specs.append([name, dtype_name, shape, nbytes, layout])  # TENSOR_FIELDS
        if total > self.max_message_bytes:
            raise ValueError(
                f"message of {total} tensor bytes exceeds max_message_bytes={self.max_message_bytes}; "
                "split the batch or raise the limit on both ends"
            )
        for key in ("epoch", "step", "layer"):
            if not _is_int(getattr(message, key)):
                raise ValueError(f"message {key} must be an int, got {getattr(message, key)!r}")
        rest = [message.sender, message.kind.value,   # HEADER_FIELDS after v, secret and run (`_prefix`)
                message.epoch, message.step, message.layer, specs, _plain_meta(message.meta)]
        try:
            packed = self._prefix + _pack(rest)[1:]   # [1:]: the 7-array's one-byte header; the 10-array's leads
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(
                f"message meta must hold only plain int/float/str/bool/None/list/dict values: {exc}"
            ) from exc
        if len(packed) > MAX_HEADER_BYTES:
            raise ValueError(f"message header is {len(packed)} bytes, above {MAX_HEADER_BYTES}; shrink meta")
        frames[0] = packed
        return frames

    def decode(self, frames: Sequence[Any], expect: Expect | None = None, peer: str = "<unknown sender>",
               header: list[Any] | None = None) -> Message:
        """Validate received frames and rebuild the message; raises MessageError naming sender and field.

        `frames` are buffers (bytes, memoryview or zmq.Frame); tensors are views on them, not copies.
        `peer` names the sender in errors raised before the header's own sender field could be read.
        `header`: `read_header`'s frames[0], where the caller needed it first (out-of-band links), checked once.
        The kind's meta and tensors against the protocol table are `protocol.validate`'s, after this.
        """
        if len(frames) < 1:
            raise MessageError(peer, "frames", "empty message, expected a header frame")
        if header is None:
            header = self.read_header(frames[0], peer)
        _v, _secret, _run, sender, kind, epoch, step, layer, specs, meta = header
        if len(frames) - 1 != len(specs):
            raise MessageError(
                sender,
                "frames",
                f"header describes {len(specs)} tensors but {len(frames) - 1} tensor frames arrived",
            )
        tensors: dict[str, torch.Tensor] = {}
        if specs:
            # One pass for the views and both byte totals: every loop on this path runs once per message.
            tensor_frames = []
            declared = received = 0
            for spec, frame in zip(specs, frames[1:], strict=True):
                view = frame if isinstance(frame, torch.Tensor) else memoryview(frame)
                tensor_frames.append(view)
                received += _frame_bytes(view)
                if type(spec) is list and len(spec) == _N_TENSOR_FIELDS and _is_int(spec[3]):
                    declared += spec[3]
            if max(declared, received) > self.max_message_bytes:
                raise MessageError(
                    sender,
                    "size",
                    f"{max(declared, received)} tensor bytes exceed the limit of {self.max_message_bytes}",
                )
            for index, (spec, frame) in enumerate(zip(specs, tensor_frames, strict=True)):
                name, dtype, shape, layout = self._check_spec(spec, index, sender, _frame_bytes(frame))
                if name in tensors:
                    raise MessageError(sender, "tensors", f"tensor name {name!r} appears twice")
                tensors[name] = _tensor_from_frame(frame, dtype, shape, layout)
        message = Message(kind, sender, epoch, step, layer, tensors, meta)
        if expect is not None:
            check_expected(message, expect)
        return message

    def read_header(self, frame: Any, peer: str = "<unknown sender>") -> list[Any]:
        """The checks `decode` makes of the header frame alone (the run's proof, then its fields), made once:
        the header's fields in HEADER_FIELDS order, its kind a `Kind`, to pass on to `decode(header=)`."""
        header = self._parse_header(frame, peer)
        header[4] = self._check_identity(header, header[3])
        return header

    def tensor_sizes(self, header: list[Any]) -> list[int]:
        """Byte counts of the tensors a header (from `read_header`) announces, each description checked.

        For transports that move tensor bytes outside ZeroMQ (workers/links/paths/oob_link.py): they must know what to
        receive before the bytes exist, and must not receive anything for a stranger (MessageError, foreign:
        `read_header` refuses it) or for an inconsistent header. `decode(header=)` then checks the bytes.
        """
        sender = header[3]
        sizes = []
        for index, spec in enumerate(header[8]):
            declared = spec[3] if type(spec) is list and len(spec) == _N_TENSOR_FIELDS else None
            self._check_spec(spec, index, sender, declared)
            sizes.append(declared)
        if sum(sizes) > self.max_message_bytes:
            raise MessageError(sender, "size",
                               f"{sum(sizes)} tensor bytes exceed the limit of {self.max_message_bytes}")
        return sizes

    def _parse_header(self, frame: Any, peer: str) -> list[Any]:
        """Parse the header and prove it belongs to this run (else `foreign`), then check its shape."""
        raw = memoryview(frame)
        if raw.nbytes > MAX_HEADER_BYTES:
            raise MessageError(peer, "header", f"{raw.nbytes} bytes, above the {MAX_HEADER_BYTES}-byte header limit",
                               foreign=True)
        try:
            header = msgpack.unpackb(raw, **_UNPACK_LIMITS)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise MessageError(peer, "header", f"not a valid msgpack header ({type(exc).__name__}: {exc})",
                               foreign=True) from exc
        if type(header) is not list:
            if isinstance(header, dict):
                self._refuse_map_header(header, peer)
            raise MessageError(peer, "header", f"expected a msgpack array, got {type(header).__name__}", foreign=True)
        count = len(header)
        prefix = self._prefix
        # Version, secret and run exactly as this codec packs them (one constant-time compare of the bytes),
        # or each checked on its own.
        packed_alike = count == _N_HEADER_FIELDS and hmac.compare_digest(raw[:len(prefix)], prefix)
        if not packed_alike:
            secret = header[1] if count > 1 else None
            if not isinstance(secret, str) or not hmac.compare_digest(secret.encode(), self._secret_bytes):
                raise MessageError(peer, "secret", "missing or wrong run secret (a stray or stale process?)",
                                   foreign=True)
            run = header[2] if count > 2 else None
            if run != self.run_id:
                raise MessageError(peer, "run_id", f"message belongs to run {run!r}, this is run "
                                   f"{self.run_id!r} (a stale process of an earlier attempt?)", foreign=True)
        sender = header[3] if count > 3 else None
        if not isinstance(sender, str) or not 0 < len(sender) <= MAX_NAME_CHARS:
            raise MessageError(peer, "sender", f"expected a name of 1..{MAX_NAME_CHARS} characters, got {sender!r}")
        if not packed_alike:
            self._check_version(header[0], sender)
        if count != _N_HEADER_FIELDS:
            raise MessageError(sender, "header",
                               f"{count} fields, expected {_N_HEADER_FIELDS}: {', '.join(HEADER_FIELDS)}")
        return header

    def _refuse_map_header(self, header: dict[Any, Any], peer: str) -> None:
        """A map header is schema 2 or earlier: from a peer of this run (secret and run id match) it is an
        auglocal version mismatch, said so; from anyone else it stays a stranger's (the caller raises)."""
        secret = header.get("secret")
        if (isinstance(secret, str) and hmac.compare_digest(secret.encode(), self._secret_bytes)
                and header.get("run") == self.run_id):
            sender = header.get("sender")
            self._check_version(header.get("v"), sender if isinstance(sender, str) and sender else peer)

    @staticmethod
    def _check_version(version: Any, sender: str) -> None:
        if not _is_int(version) or version != SCHEMA_VERSION:
            raise MessageError(
                sender,
                "version",
                f"schema version {version!r}, this build speaks "
                f"{SCHEMA_VERSION}; run one auglocal version in all processes",
            )

    @staticmethod
    def _check_identity(header: list[Any], sender: str) -> Kind:
        """Fields of a header already proven to be this run's (a violation is the peer's failure); its Kind."""
        kind = _KINDS.get(header[4]) if isinstance(header[4], str) else None
        if kind is None:
            raise MessageError(
                sender, "kind", f"unknown kind {header[4]!r}, expected one of {[k.value for k in Kind]}"
            )
        if not (type(header[5]) is int and type(header[6]) is int and type(header[7]) is int):
            index = next(i for i in (5, 6, 7) if not _is_int(header[i]))
            raise MessageError(sender, HEADER_FIELDS[index], f"expected an int, got {header[index]!r}")
        if not isinstance(header[9], dict):
            raise MessageError(sender, "meta", f"expected a map, got {type(header[9]).__name__}")
        if not isinstance(header[8], list) or len(header[8]) > MAX_TENSORS:
            raise MessageError(sender, "tensors", f"expected a list of at most {MAX_TENSORS} tensor descriptions")
        return kind

    @staticmethod
    def _check_spec(spec: Any, index: int, sender: str, frame_bytes: int | None
                    ) -> tuple[str, torch.dtype, tuple[int, ...], str]:
        if type(spec) is not list or len(spec) != _N_TENSOR_FIELDS:
            raise MessageError(sender, f"tensors[{index}]",
                               f"expected an array of {_N_TENSOR_FIELDS} fields: {', '.join(TENSOR_FIELDS)}")
        name, dtype_name, shape, nbytes, layout = spec
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise MessageError(sender, f"tensors[{index}].name",
                               f"expected 1..{MAX_NAME_CHARS} characters, got {name!r}")
        dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise MessageError(
                sender, f"tensors[{name}].dtype", f"unknown dtype {dtype_name!r}, expected one of {list(DTYPES)}"
            )
        if type(shape) is not list or len(shape) > MAX_NDIM or not _dims_ok(shape):
            raise MessageError(
                sender, f"tensors[{name}].shape", f"expected at most {MAX_NDIM} non-negative ints, got {shape!r}"
            )
        if layout != LAYOUTS[0] and (layout != LAYOUTS[1] or len(shape) != 4):   # channels_last is 4-D only
            raise MessageError(
                sender, f"tensors[{name}].layout",
                f"got {layout!r} for shape {shape}, expected 'contiguous', or 'channels_last' for a 4-D shape",
            )
        expected = math.prod(shape) * dtype.itemsize
        if not _is_int(nbytes) or nbytes != expected:
            raise MessageError(
                sender,
                f"tensors[{name}].nbytes",
                f"declared {nbytes!r} bytes but shape {shape} of {dtype_name} needs {expected}",
            )
        if frame_bytes != nbytes:
            raise MessageError(
                sender,
                f"tensors[{name}].nbytes",
                f"frame has {frame_bytes} bytes, header declares {nbytes} (truncated or corrupted frame)",
            )
        return name, dtype, tuple(shape), layout


def check_expected(message: Message, expect: Expect) -> None:
    """Raise MessageError unless `message` has an expected kind and, where given, exactly those tensors.

    Each expected tensor must match in dtype and in every dim of its spec that is not None.
    """
    if message.kind not in expect:
        raise MessageError(
            message.sender, "kind", f"got {message.kind.value!r}, expected one of {[k.value for k in expect]}"
        )
    specs = expect[message.kind]
    if specs is None:
        return
    if set(message.tensors) != set(specs):
        raise MessageError(
            message.sender, "tensors", f"got tensors {sorted(message.tensors)}, expected {sorted(specs)}"
        )
    for name, spec in specs.items():
        tensor = message.tensors[name]
        if tensor.dtype != DTYPES[spec.dtype]:
            raise MessageError(
                message.sender,
                f"tensors[{name}].dtype",
                f"got {_DTYPE_NAMES[tensor.dtype]}, expected {spec.dtype}",
            )
        shape = tuple(tensor.shape)
        if len(shape) != len(spec.shape) or any(
            e is not None and e != d for d, e in zip(shape, spec.shape, strict=True)
        ):
            free = tuple("*" if e is None else e for e in spec.shape)
            raise MessageError(message.sender, f"tensors[{name}].shape", f"got {shape}, expected {free}")

"""The runtime's protocol as data: every message type, who sends it to whom, its tensors and its typed meta.

`PROTOCOL` is the one table of message types. Each receiving side validates what it receives against it
(`validate`): the kind must travel on that route, the meta must match the kind's record field by field, and
the tensors must be exactly the kind's tensors with the dtype and shape this receiver expects (batch dim
free, and the same in every tensor of the message). Each side dispatches through a handler table that
`check_handlers` proves complete: every kind of its route has exactly one handler, and nothing else.

To add a message kind: add a value to `auglocal.workers.wire.messages.Kind`, its meta record below, one `MessageType`
row in
`PROTOCOL`, and a handler on the receiving side (the test of handler completeness fails until you do).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from enum import Enum
from typing import Any, Union

from auglocal.workers.wire.compiled import one_pass_check
from auglocal.workers.wire.messages import DTYPES, Kind, Message, MessageError, TensorSpec, check_expected


class Route(str, Enum):
    """Where a kind travels. Activations and control flow down the pipeline; reports go to the coordinator."""

    DOWN = "upstream -> worker"       # the coordinator (to worker 0) or worker r-1 (to worker r), in order;
                                      # control kinds: the coordinator to a worker's control inbox
    REPORT = "worker -> coordinator"  # each worker to the coordinator's results inbox


# --- meta records: one per kind, plain fields only (they travel as a msgpack map) --------------------------
@dataclass(frozen=True)
class NoMeta:
    """A kind that carries no metadata."""


@dataclass(frozen=True)
class TrainMeta:
    g: int                      # global step: minibatches fed since the run's start (fault targets use it)
    seq: int = -1               # index of this message among the attempt's DOWN messages (-1: unsequenced)


@dataclass(frozen=True)
class SeqMeta:
    """A DOWN message that carries nothing but its sequence number (a test batch, the stop marker)."""

    seq: int = -1


@dataclass(frozen=True)
class CheckpointMeta:
    id: int
    dir: str                    # folder that every worker writes its layer files into
    seq: int = -1


@dataclass(frozen=True)
class RelinkMeta:
    address: str                # the restarted downstream worker's new inbox
    from_seq: int               # resend every logged message with a larger seq (the last committed marker's)


@dataclass(frozen=True)
class ExpectReplayMeta:
    upstream: str               # sender name of the restarted upstream worker, whose repeats are dropped


@dataclass(frozen=True)
class CommittedMeta:
    id: int
    seq: int                    # the committed marker's seq: logged messages up to it are no longer needed


@dataclass(frozen=True)
class HeartbeatMeta:
    waiting: str                # 'recv' (idle, waiting for input) or 'send' (blocked on a full link)


@dataclass(frozen=True)
class MetricsMeta:
    busy: float                 # seconds of compute for this step, send time excluded
    n: int                      # images in the minibatch
    losses: dict[str, float]    # first layer id of each module -> its local (or global) loss
    correct: int | None         # top-1 hits of the top module; None on other workers
    cpu: float = 0.0            # CPU seconds of this step's compute on the worker's thread, send excluded
                                # (busy is wall time: on cores shared by time-slicing it counts the waits)
    done: float = 0.0           # the worker's clock (perf_counter) when the step ended: rates between one
                                # worker's steps, however late or batched its reports arrive
    later: list[dict[str, Any]] = field(default_factory=list)   # later steps' figures, one row each: epoch,
                                # step and the fields above (workers/runtime/reports.py; read with metrics_rows)


@dataclass(frozen=True)
class EvalResultMeta:
    correct: int
    n: int


@dataclass(frozen=True)
class CheckpointAckMeta:
    id: int


@dataclass(frozen=True)
class StoppedMeta:
    max_in_flight: int          # most unconsumed messages seen on this worker's outgoing link
    gpu_peak_bytes: int
    updates: dict[str, int]     # layer id -> minibatches applied
    replay_log: dict[str, int] = field(default_factory=dict)   # auglocal.workers.runtime.replay_log.ReplayLog.stats()


@dataclass(frozen=True)
class LayerFileMeta:
    dir: str                    # the coordinator's folder the file belongs in (a checkpoint's, or the final one)
    name: str                   # layer_NNN.pt or head.pt (workers/runtime/layer_files.py)
    offset: int                 # where this chunk starts in the file
    size: int                   # the whole file's size in bytes
    sha256: str                 # the whole file's SHA-256, checked once every chunk has arrived


@dataclass(frozen=True)
class ErrorMeta:
    detail: str
    restartable: bool           # False: a restart would fail the same way (e.g. the disk is full)


@dataclass(frozen=True)
class DivergedMeta:
    layer: int                  # first layer id of the local module whose loss (or gradient) was not finite
    what: str                   # 'loss' or 'gradient'
    value: str                  # 'nan', 'inf' or '-inf' (the message's epoch and step say when)


@dataclass(frozen=True)
class RejectedMeta:
    detail: str


# --- the table ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSlot:
    """A tensor a kind carries: its name, what it is (which decides dtype and shape), whether it may be absent."""

    name: str
    role: str                   # 'activation' | 'labels' | 'image' | 'bytes'
    optional: bool = False


@dataclass(frozen=True)
class MessageType:
    kind: Kind
    route: Route
    meta: type
    tensors: tuple[TensorSlot, ...] = ()
    doc: str = ""


_H, _Y, _X = TensorSlot("h", "activation"), TensorSlot("y", "labels"), TensorSlot("x", "image", optional=True)

PROTOCOL: dict[Kind, MessageType] = {t.kind: t for t in (
    MessageType(Kind.TRAIN, Route.DOWN, TrainMeta, (_H, _Y, _X),
                "a training minibatch: the stage input h, labels y, and the image x when a later module needs it"),
    MessageType(Kind.EVAL, Route.DOWN, SeqMeta, (_H, _Y), "a test batch, primary forward in eval mode"),
    MessageType(Kind.CHECKPOINT, Route.DOWN, CheckpointMeta, (),
                "marker: save your layers into dir, pass the marker on, acknowledge"),
    MessageType(Kind.STOP, Route.DOWN, SeqMeta, (),
                "marker: save your final layers, pass it on, report, exit (held workers: once released)"),
    MessageType(Kind.RELINK, Route.DOWN, RelinkMeta, (),
                "control: your downstream restarted; open a fresh link to address, resend your log after from_seq"),
    MessageType(Kind.EXPECT_REPLAY, Route.DOWN, ExpectReplayMeta, (),
                "control: your upstream restarted and resends; drop its messages you already handled"),
    MessageType(Kind.COMMITTED, Route.DOWN, CommittedMeta, (), "control: a checkpoint committed; prune your log"),
    MessageType(Kind.RELEASE, Route.DOWN, NoMeta, (),
                "control: every worker reported stopped; a worker held after the stop marker may exit"),
    MessageType(Kind.READY, Route.REPORT, NoMeta, (), "the worker has built its stage and bound its inbox"),
    MessageType(Kind.HEARTBEAT, Route.REPORT, HeartbeatMeta, (),
                "alive while waiting (sent on a timer inside every receive and send wait)"),
    MessageType(Kind.METRICS, Route.REPORT, MetricsMeta, (),
                "training step(s) done: losses, hits, busy (wall) and CPU time; a busy worker's later steps in later"),
    MessageType(Kind.EVAL_RESULT, Route.REPORT, EvalResultMeta, (), "the last worker's hits on one test batch"),
    MessageType(Kind.CHECKPOINT_ACK, Route.REPORT, CheckpointAckMeta, (), "this worker's layer files are written"),
    MessageType(Kind.STOPPED, Route.REPORT, StoppedMeta, (), "final layers saved; update counters and link stats"),
    MessageType(Kind.LAYER_FILE, Route.REPORT, LayerFileMeta, (TensorSlot("data", "bytes"),),
                "a chunk of one layer file, for workers without the run folder (several machines, "
                "launch/backends/elastic/)"),
    MessageType(Kind.ERROR, Route.REPORT, ErrorMeta, (),
                "this worker cannot go on (a malformed message from its own pipeline, a minibatch seen twice)"),
    MessageType(Kind.DIVERGED, Route.REPORT, DivergedMeta, (),
                "--nonfinite stop: a local module's loss or gradient was not finite at this step; the run stops"),
    MessageType(Kind.REJECTED, Route.REPORT, RejectedMeta, (), "a stranger's message was dropped (counted)"),
)}


def kinds_on(route: Route) -> frozenset[Kind]:
    """Every kind that travels on `route`: what a receiver on that route must handle."""
    return frozenset(k for k, t in PROTOCOL.items() if t.route is route)


def check_handlers(handlers: Mapping[Kind, Callable], route: Route, owner: str) -> None:
    """Raise unless `handlers` has exactly one handler for each kind of `route` and none for other kinds."""
    missing = kinds_on(route) - set(handlers)
    extra = set(handlers) - kinds_on(route)
    if missing or extra:
        raise TypeError(f"{owner} handlers do not match the protocol's {route.value} kinds: missing "
                        f"{sorted(k.value for k in missing)}, not on this route {sorted(k.value for k in extra)}")


def dispatch(handlers: Mapping[Kind, Callable[[Message], Any]], message: Message) -> Any:
    """Call the handler of the message's kind; a kind without one is a protocol error, never ignored."""
    handler = handlers.get(message.kind)
    if handler is None:
        raise MessageError(message.sender, "kind", f"no handler for kind {message.kind.value!r} here")
    return handler(message)


# --- validation ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InboxSchema:
    """The tensors one receiver expects, by role: its stage's input activation, labels, and the image."""

    activation: TensorSpec
    image: TensorSpec
    labels: TensorSpec = TensorSpec("int64", (None,))
    bytes: TensorSpec = TensorSpec("uint8", (None,))

    def spec(self, role: str) -> TensorSpec:
        return {"activation": self.activation, "image": self.image, "labels": self.labels, "bytes": self.bytes}[role]


def _conforms(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is list:
        (item_t,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_conforms(v, item_t) for v in value)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, a) for a in typing.get_args(annotation))
    if origin is dict:
        key_t, value_t = typing.get_args(annotation)
        return isinstance(value, dict) and all(_conforms(k, key_t) and _conforms(v, value_t)
                                               for k, v in value.items())
    if annotation is type(None):
        return value is None
    if annotation is float:
        return type(value) in (float, int)
    return type(value) is annotation


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(record: type) -> dict[str, Any]:
    if record not in _HINTS:
        _HINTS[record] = typing.get_type_hints(record)
    return _HINTS[record]


def _typed_meta(message: Message, record: type) -> Any:
    raw = message.meta
    if is_record(raw):
        if type(raw) is not record:
            raise MessageError(message.sender, "meta", f"got a {type(raw).__name__}, expected {record.__name__}")
        return raw
    names = [f.name for f in fields(record)]
    required = {f.name for f in fields(record) if f.default is MISSING and f.default_factory is MISSING}
    if not isinstance(raw, dict) or not required <= set(raw) <= set(names):
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise MessageError(message.sender, "meta", f"{message.kind.value}: got fields {got}, expected {sorted(names)}")
    hints = _hints(record)
    for name in raw:
        if not _conforms(raw[name], hints[name]):
            raise MessageError(message.sender, f"meta.{name}",
                               f"{message.kind.value}: got {raw[name]!r}, expected {hints[name]}")
    return record(**raw)


#: kinds that carry the coordinator's sequence number (`meta.seq`) down the whole pipeline
SEQUENCED = frozenset({Kind.TRAIN, Kind.EVAL, Kind.CHECKPOINT, Kind.STOP})


def is_record(value: Any) -> bool:
    return hasattr(type(value), "__dataclass_fields__")


def _check_tensors(message: Message, mtype: MessageType, schema: InboxSchema | None) -> None:
    names = {s.name for s in mtype.tensors}
    required = {s.name for s in mtype.tensors if not s.optional}
    present = set(message.tensors)
    if not required <= present or not present <= names:
        raise MessageError(message.sender, "tensors", f"{message.kind.value}: got tensors {sorted(present)}, "
                           f"expected {sorted(required)}" + (f" and optionally {sorted(names - required)}"
                                                             if names - required else ""))
    if schema is None or not present:
        return
    specs = {s.name: schema.spec(s.role) for s in mtype.tensors if s.name in present}
    check_expected(message, {message.kind: specs})
    batches = {name: int(t.shape[0]) for name, t in message.tensors.items()}
    if len(set(batches.values())) != 1:
        raise MessageError(message.sender, "tensors", f"batch sizes differ between tensors: {batches}")


def validate(message: Message, route: Route, schema: InboxSchema | None = None) -> Message:
    """Check a decoded message of this run against the table; returns it with its typed meta record.

    Raises MessageError (a peer's failure, never `foreign`) for a kind that does not travel on `route`,
    meta that does not match the kind's record, or tensors other than the kind's (checked against
    `schema` where given). Also used by senders (`typed`) so nothing leaves that a receiver would refuse.
    The wire checks (framing, secret, run id, header fields, tensor frames) are `Codec.decode`'s, made
    before this on every receive path but the thread link's by-reference messages, which have no wire form.

    One pass of checks compiled per (kind, route, schema) the first time they meet (`_compiled`): a message
    that passes them all is accepted there; one that fails any goes through the table's general checks
    (`_validate_slowly`), which raise the error that names what is wrong. So both accept the same messages.
    """
    table = _COMPILED.get(route if schema is None else (route, id(schema)))
    check = table.get(message.kind) if table is not None else None
    if check is None:
        check = _compile(message.kind, route, schema)
    if check is False or not check(message):
        return _validate_slowly(message, route, schema)
    return message


def _validate_slowly(message: Message, route: Route, schema: InboxSchema | None) -> Message:
    mtype = PROTOCOL.get(message.kind)
    if mtype is None or mtype.route is not route:
        raise MessageError(message.sender, "kind", f"{message.kind.value!r} does not travel {route.value}; "
                           f"expected one of {sorted(k.value for k in kinds_on(route))}")
    message.meta = _typed_meta(message, mtype.meta)
    _check_tensors(message, mtype, schema)
    return message


# --- the compiled checks ------------------------------------------------------------------------------------
#: route (no schema) or (route, id(schema)) -> kind -> its check (False: the kind does not travel there)
_COMPILED: dict[Any, dict[Kind, Any]] = {}
_SCHEMAS: list[InboxSchema] = []     # every schema compiled for stays alive, so its id is never reused


def _compile(kind: Kind, route: Route, schema: InboxSchema | None):
    """Build (and keep) the one-pass check of `kind` arriving on `route` with `schema`."""
    if schema is not None and not any(schema is known for known in _SCHEMAS):
        _SCHEMAS.append(schema)
    table = _COMPILED.setdefault(route if schema is None else (route, id(schema)), {})
    mtype = PROTOCOL.get(kind)
    if mtype is None or mtype.route is not route:
        table[kind] = False
        return False
    specs = None if schema is None else {
        t.name: (DTYPES[schema.spec(t.role).dtype], schema.spec(t.role).shape) for t in mtype.tensors}
    table[kind] = check = one_pass_check(mtype.meta, _hints(mtype.meta), mtype.tensors, specs)
    return check


def metrics_rows(message: Message) -> list[tuple[int, int, MetricsMeta]]:
    """The (epoch, step, figures) of every step a validated METRICS message reports: its own, then each row of
    `later`, each row checked against MetricsMeta as a message of its own would be (MessageError naming the
    row otherwise)."""
    meta = message.meta
    if not meta.later:
        return [(message.epoch, message.step, meta)]
    rows = [(message.epoch, message.step, replace(meta, later=[]))]
    for index, row in enumerate(meta.later):
        epoch, step = row.get("epoch"), row.get("step")
        if type(epoch) is not int or type(step) is not int or "later" in row:
            raise MessageError(message.sender, f"meta.later[{index}]",
                               f"a row needs int epoch and step and no rows of its own, got {sorted(row)}")
        figures = {k: v for k, v in row.items() if k not in ("epoch", "step")}
        one = validate(Message(Kind.METRICS, message.sender, epoch, step, meta=figures), Route.REPORT)
        rows.append((epoch, step, one.meta))
    return rows


def format_table() -> str:
    """The protocol as a Markdown table (kind, route, tensors, meta fields, purpose), as in the README."""
    rows = ["| kind | route | tensors | meta | what it is for |", "|---|---|---|---|---|"]
    for t in PROTOCOL.values():
        tensors = ", ".join(f"{s.name}{'?' if s.optional else ''} ({s.role})" for s in t.tensors) or "-"
        meta = ", ".join(f.name for f in fields(t.meta)) or "-"
        rows.append(f"| `{t.kind.value}` | {t.route.value} | {tensors} | {meta} | {t.doc} |")
    return "\n".join(rows)


def activation_spec(shape: tuple[int, ...], dtype: str = "float32") -> TensorSpec:
    """The TensorSpec of an activation of per-image `shape`, batch dim free."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}")
    return TensorSpec(dtype, (None, *shape))

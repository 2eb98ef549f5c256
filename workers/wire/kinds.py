"""What a message can be: the `Kind`s of the wire, and their wire values.

Apart from the codec (messages.py, which re-exports `Kind`) so that module stays one concept: encoding and
checking. workers/wire/protocol.py says who sends each kind to whom and what it carries.
"""

from __future__ import annotations

from enum import Enum


class Kind(str, Enum):
    """What a message is for. workers/wire/protocol.py says who sends each kind to whom and what it carries."""

    TRAIN = "train"
    EVAL = "eval"
    CHECKPOINT = "checkpoint"
    STOP = "stop"
    READY = "ready"
    METRICS = "metrics"
    EVAL_RESULT = "eval_result"
    CHECKPOINT_ACK = "checkpoint_ack"
    STOPPED = "stopped"
    ERROR = "error"
    DIVERGED = "diverged"
    REJECTED = "rejected"
    HEARTBEAT = "heartbeat"
    RELINK = "relink"
    EXPECT_REPLAY = "expect_replay"
    COMMITTED = "committed"
    RELEASE = "release"
    LAYER_FILE = "layer_file"
    CREDIT = "credit"  # transport-internal: a receiver returns one per consumed message (see transport.py)


# Wire value -> Kind: a dict lookup, where Kind(value) costs an Enum construction per message.
_KINDS: dict[str, Kind] = {k.value: k for k in Kind}

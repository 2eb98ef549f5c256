"""The protocol table: validation by kind and route, typed meta, tensors, and the README's copy of the table."""

from pathlib import Path

import pytest
import torch
from auglocal.workers.wire.messages import Kind, Message, MessageError, TensorSpec
from auglocal.workers.wire.protocol import (
    CheckpointMeta,
    InboxSchema,
    MetricsMeta,
    Route,
    check_handlers,
    dispatch,
    format_table,
    kinds_on,
    validate,
)

SCHEMA = InboxSchema(activation=TensorSpec("float32", (None, 16, 8, 8)), image=TensorSpec("float32", (None, 3, 8, 8)))


def train(**tensors) -> Message:
    return Message(Kind.TRAIN, "worker0", 0, 1, tensors=tensors, meta={"g": 1})


def test_valid_messages_get_their_typed_meta():
    msg = validate(train(h=torch.zeros(2, 16, 8, 8), y=torch.zeros(2, dtype=torch.long)), Route.DOWN, SCHEMA)
    assert msg.meta.g == 1
    ckpt = validate(Message(Kind.CHECKPOINT, "c", meta={"id": 2, "dir": "/x", "seq": 4}), Route.DOWN)
    assert ckpt.meta == CheckpointMeta(2, "/x", 4)
    report = validate(Message(Kind.METRICS, "w", meta={"busy": 1, "n": 2, "losses": {"0": 0.5}, "correct": None}),
                      Route.REPORT)
    assert report.meta == MetricsMeta(1, 2, {"0": 0.5}, None)


@pytest.mark.parametrize("message, field", [
    (Message(Kind.METRICS, "w", meta={}), "kind"),                                       # a report sent down
    (train(h=torch.zeros(2, 16, 8, 8)), "tensors"),                                     # y missing
    (train(h=torch.zeros(2, 16, 8, 8), y=torch.zeros(2).long(), z=torch.ones(1)), "tensors"),
    (train(h=torch.zeros(2, 16, 4, 4), y=torch.zeros(2).long()), "tensors[h].shape"),
    (train(h=torch.zeros(2, 16, 8, 8).double(), y=torch.zeros(2).long()), "tensors[h].dtype"),
    (train(h=torch.zeros(2, 16, 8, 8), y=torch.zeros(3).long()), "tensors"),           # batch sizes differ
    (Message(Kind.CHECKPOINT, "c", meta={"id": "2", "dir": "/x", "seq": 0}), "meta.id"),
    (Message(Kind.CHECKPOINT, "c", meta={"id": 2, "seq": 0}), "meta"),
])
def test_what_the_table_does_not_allow_is_a_peer_error(message, field):
    with pytest.raises(MessageError) as err:
        validate(message, Route.DOWN, SCHEMA)
    assert err.value.field == field and not err.value.foreign


def test_handler_tables_must_cover_their_route_exactly():
    handlers = {k: print for k in kinds_on(Route.DOWN)}
    check_handlers(handlers, Route.DOWN, "test")
    with pytest.raises(TypeError, match="missing"):
        check_handlers({k: print for k in list(handlers)[1:]}, Route.DOWN, "test")
    with pytest.raises(TypeError, match="not on this route"):
        check_handlers({**handlers, Kind.METRICS: print}, Route.DOWN, "test")
    with pytest.raises(MessageError, match="no handler"):
        dispatch({}, Message(Kind.STOP, "c"))


def test_readme_shows_the_protocol_table_as_the_code_has_it():
    readme = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    assert format_table() in readme

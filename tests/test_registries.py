"""Each extension point is one registry entry with every part: a fault kind, a message kind. (Rules, transports
and backends have their own registry tests beside their packages.) Each check is also shown to fail on an
entry with a part missing, so a test that passes says something."""

from __future__ import annotations

import dataclasses

import pytest
from auglocal.launch.cli import build_parser
from auglocal.workers.runtime import faults
from auglocal.workers.wire import protocol
from auglocal.workers.wire.messages import Kind

ROLES = {"activation", "labels", "image", "bytes"}


@pytest.mark.parametrize("name", faults.KINDS)
def test_every_fault_kind_has_every_part_and_parses_from_its_usage(name):
    kind = faults.REGISTRY[name]
    faults.check_kind(kind)
    example = ":".join(p.replace("=W", "=0").replace("=S", "=1").replace("=C", "=1").replace("=D", "=0.5")
                       for p in kind.usage().split(":"))
    assert faults.parse_fault(example).kind == name
    assert f"{kind.usage()}: {kind.help}" in faults.help_text()


@pytest.mark.parametrize("broken", [dict(point="nowhere"), dict(help=" "), dict(options=("worker", "colour")),
                                    dict(target="moon"), dict(options=("step",)), dict(name="")])
def test_a_fault_kind_lacking_a_part_is_refused(broken):
    kind = dataclasses.replace(faults.REGISTRY["kill"], **broken)
    with pytest.raises(ValueError, match="lacks"):
        faults.check_kind(kind)


def test_the_cli_offers_every_fault_kind_in_its_help():
    help_text = " ".join(build_parser().format_help().split())
    for name in faults.KINDS:
        assert name in help_text


def assert_complete(t: protocol.MessageType) -> None:
    """A message kind's entry: a route, a meta record (a dataclass), tensor slots of known roles, a doc line."""
    assert isinstance(t.route, protocol.Route), f"{t.kind}: no route"
    assert dataclasses.is_dataclass(t.meta), f"{t.kind}: meta is not a record"
    assert all(s.role in ROLES for s in t.tensors), f"{t.kind}: a tensor slot of unknown role"
    assert len({s.name for s in t.tensors}) == len(t.tensors), f"{t.kind}: two slots of one name"
    assert t.doc.strip(), f"{t.kind}: no doc line"


def test_every_message_kind_has_one_entry_with_every_part():
    assert set(protocol.PROTOCOL) == set(Kind) - {Kind.CREDIT}   # credits never leave the link (links/)
    for t in protocol.PROTOCOL.values():
        assert_complete(t)


@pytest.mark.parametrize("broken", [dict(doc=""), dict(meta=int),
                                    dict(tensors=(protocol.TensorSlot("h", "colour"),))])
def test_a_message_kind_lacking_a_part_is_refused(broken):
    t = dataclasses.replace(protocol.PROTOCOL[Kind.TRAIN], **broken)
    with pytest.raises(AssertionError):
        assert_complete(t)

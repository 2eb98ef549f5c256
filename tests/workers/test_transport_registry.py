"""The transport registry (workers/links/registry.py): every entry whole, every list the code used to spell out
by hand derived from it unchanged, and the CLI's choices read from it."""

from __future__ import annotations

import dataclasses

import pytest
from auglocal.launch.backends.elastic import links as elastic_links
from auglocal.launch.cli import build_parser
from auglocal.launch.run import transport_choice
from auglocal.launch.run.transport_choice import Place, pick_for_pair
from auglocal.workers.links import registry
from auglocal.workers.links.paths.oob_link import OobSender
from auglocal.workers.links.zmq_link import Receiver, Sender


@pytest.mark.parametrize("entry", registry.REGISTRY, ids=lambda e: e.name)
def test_every_entry_has_every_part(entry):
    registry.check_entry(entry)


@pytest.mark.parametrize("broken", [
    dict(name=""), dict(where=frozenset()), dict(where=frozenset({"the moon"})), dict(device="tpu"),
    dict(needs=frozenset({"pyzmq", "magic"})), dict(needs=frozenset()), dict(sender=object), dict(receiver=None),
    dict(path=None), dict(scheme="udp"), dict(gpus=0), dict(group_backend=None)], ids=lambda b: next(iter(b)))
def test_an_entry_lacking_a_part_is_refused(broken):
    nccl = registry.BY_NAME["nccl"]          # out of band, a process group, CUDA: every part in use
    with pytest.raises(ValueError, match="transport entry"):
        registry.check_entry(dataclasses.replace(nccl, **broken))


def test_a_zmq_entry_with_an_out_of_band_sender_is_refused():
    with pytest.raises(ValueError, match="or neither"):
        registry.check_entry(dataclasses.replace(registry.BY_NAME["tcp"], sender=OobSender))
    assert issubclass(OobSender, Sender) and registry.BY_NAME["tcp"].receiver is Receiver


def test_auto_may_pick_a_transport_only_where_it_applies():
    one_host_only = registry.BY_NAME["cuda-ipc"]
    with pytest.raises(ValueError, match="where it does not apply"):
        registry.check_entry(dataclasses.replace(one_host_only, auto=frozenset({registry.ACROSS_HOSTS})))


def test_auto_needs_exactly_one_pick_per_device_and_placement():
    registry.check_registry(registry.REGISTRY)
    doubled = (*registry.REGISTRY, dataclasses.replace(registry.BY_NAME["ipc"], name="ipc2"))
    with pytest.raises(ValueError, match="exactly one pick"):
        registry.check_registry(doubled)
    with pytest.raises(ValueError, match="unique"):
        registry.check_registry((*registry.REGISTRY, registry.BY_NAME["ipc"]))


def test_the_derived_lists_equal_the_hand_written_ones_they_replace():
    """The literal values the eight lists had before the registry (behaviour unchanged)."""
    assert registry.TRANSPORTS == ("ipc", "tcp", "curve", "gloo", "nccl", "cuda-ipc")
    assert registry.OUT_OF_BAND == {"gloo", "nccl", "cuda-ipc"}
    assert registry.GROUP_TRANSPORTS == {"gloo": "gloo", "nccl": "cpu:gloo,cuda:nccl"}
    assert registry.ZMQ_ONLY == ("tcp", "curve")
    assert registry.ONE_HOST_TRANSPORTS == ("ipc", "tcp", "curve")
    assert registry.GPU_TRANSPORTS == ("cuda-ipc", "nccl")
    assert registry.BY_FEWEST_GPUS == ("ipc", "tcp", "curve", "gloo", "cuda-ipc", "nccl")
    assert transport_choice.TRANSPORT_CHOICES == ("auto", "ipc", "tcp", "curve", "gloo", "nccl", "cuda-ipc")
    assert elastic_links.GROUP_TRANSPORTS is registry.GROUP_TRANSPORTS


@pytest.mark.parametrize("src, dst, expected", [
    ("cpu", "cpu", {"same": "ipc", "other": "curve"}),
    ("cuda:0", "cuda:1", {"same": "cuda-ipc", "other": "nccl"}),
    ("cuda:0", "cpu", {"same": "ipc", "other": "curve"}),
])
def test_auto_picks_per_pair_as_before(src, dst, expected):
    assert pick_for_pair(Place("a", src), Place("a", dst)) == expected["same"]
    assert pick_for_pair(Place("a", src), Place("b", dst)) == expected["other"]


def test_the_cli_offers_the_registry_s_transports():
    (action,) = [a for a in build_parser()._actions if "--transport" in a.option_strings]
    assert tuple(action.choices) == ("auto", *registry.TRANSPORTS)


def test_one_process_group_serves_every_link_of_a_plan():
    assert registry.group_backend_for(("curve", "tcp")) is None
    assert registry.group_backend_for(("curve", "gloo", "gloo")) == "gloo"
    assert registry.group_backend_for(("nccl",)) == "cpu:gloo,cuda:nccl"
    assert registry.group_backend_for(("gloo", "nccl")) == "cpu:gloo,cuda:nccl"    # the mixed one serves both


def test_only_the_single_host_ipc_links_need_the_socket_folder():
    from auglocal.launch.run.transport_choice import binds_ipc_sockets

    assert binds_ipc_sockets("auto", elastic=False) and binds_ipc_sockets("ipc", elastic=False)
    assert not binds_ipc_sockets("auto", elastic=True)
    assert not any(binds_ipc_sockets(t, elastic=False) for t in ("tcp", "curve", "gloo", "nccl", "cuda-ipc"))

"""The NCCL path's start-up and timeouts, driven on CPU by a gloo stand-in (tests/workers/dist_standin.py).

Two threads are ranks 0 and 1, each with its own gloo group; NCCL's lazy communicator (the first send or
receive of a pair blocks until the other rank's first one) is emulated on top. The link is set up in exactly
the elastic launch's order (launch/backends/elastic/links.py, as launch/backends/elastic/worker.py calls it): the
downstream rank
binds its inbox, then publishes its endpoint record; the upstream rank reads that record, then connects and
sends its warm-up. When the receiver posted its warm-up receive while binding (before it published), this
deadlocked: it waited for a sender that could not find it yet.
"""

from __future__ import annotations

import datetime
import threading

import pytest
import torch
import torch.distributed as dist
from auglocal.launch.backends.elastic.links import bind_inbox, connect, publish_inbox, publish_key
from auglocal.launch.backends.elastic.store import RunStore
from auglocal.workers.links import registry
from auglocal.workers.links.link import Link
from auglocal.workers.links.paths import oob_link
from auglocal.workers.wire.messages import Codec, Kind, Message, MessageError

from tests.workers.dist_standin import GroupOps, LazyPairing, gloo_pair

WAIT_MS = 10_000


@pytest.fixture
def ranks(monkeypatch):
    """Each rank's ops (gloo group + lazy pairing), wired into the DistPath that Link builds for gloo links."""
    store, groups = gloo_pair()
    ops = {rank: LazyPairing(GroupOps(groups[rank]), store, rank, timeout_s=8) for rank in (0, 1)}
    real = oob_link.DistPath

    def path(backend, peer, tag, device):   # the rank is the end that is not `peer` (two ranks)
        return real(backend, peer, tag, device, ops=ops[1 - peer])

    monkeypatch.setattr(registry, "DistPath", path)    # the name the registry builds gloo paths from
    yield ops
    for group in groups:
        group.abort() if hasattr(group, "abort") else None


def test_warm_up_in_the_elastic_order_does_not_deadlock(ranks):
    hash_store = dist.HashStore()
    hash_store.set_timeout(datetime.timedelta(seconds=8))
    store = RunStore(hash_store, "run-secret", "0.test", timeout_s=8)
    codec = Codec("run", "codec-secret")
    keys = {rank: publish_key(store, rank, "127.0.0.1") for rank in (0, 1)}
    got, errors = [], []

    def downstream():   # rank 1: bind, publish, then receive (the first receive warms the pair)
        try:
            link = Link("tcp://127.0.0.1:0", 2, "gloo", src_rank=0, dst_rank=1, tag=1)
            inbox = bind_inbox(store, link, codec, "w0", keys[1], senders=[0])
            try:
                publish_inbox(store, "inbox/0", inbox, keys[1])
                got.append(inbox.recv(WAIT_MS))
            finally:
                inbox.close()
        except Exception as exc:   # noqa: BLE001 - reported to the test below
            errors.append(f"downstream: {type(exc).__name__}: {exc}")

    def upstream():     # rank 0: read the record, connect (warm-up send), send one message
        try:
            with connect(store, "inbox/0", codec, keys[0], "gloo", 2, src_rank=0, dst_rank=1) as outbox:
                outbox.send(Message(Kind.TRAIN, "w-1", step=4, tensors={"x": torch.arange(6.0)}), WAIT_MS)
                outbox.wait_all(WAIT_MS)
        except Exception as exc:   # noqa: BLE001
            errors.append(f"upstream: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=downstream), threading.Thread(target=upstream)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(got) == 1 and got[0].step == 4 and torch.equal(got[0].tensors["x"], torch.arange(6.0))
    assert ranks[0].log[0] == "isend" and ranks[1].log[0] == "irecv"   # the warm-ups, then the bytes


def test_tensor_bytes_that_never_come_are_a_message_error():
    """gloo (and NCCL) raise from Work.wait(timeout) on a timeout; the receiver turns that into MessageError."""
    _store, groups = gloo_pair()
    path = oob_link.DistPath("gloo", 0, 3, torch.device("cpu"), ops=GroupOps(groups[1]), bytes_timeout_s=0.3)
    with pytest.raises(MessageError, match="tensor bytes did not arrive within 0.3 s"):
        path.receive({"path": "dist", "tag": 3}, [16], "peer")

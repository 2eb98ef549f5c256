"""A worker copies its outputs to the host only for a host transport (workers/runtime/worker.py `Worker._outgoing`).

On cuda-ipc and nccl links (`keeps_device`) the link moves device memory itself; a host copy there is a
device-to-host and host-to-device round trip per message, and on nccl it sends through the group's CPU backend
while the receiver posts NCCL receives (issue 21, item 5). CPU tensors never reach `to_host`'s copy, so the test
counts its calls: a double of a device link (a MemorySender that says `keeps_device`, as OobSender does over a
cuda-ipc or nccl path) must see none, a plain host link one per output tensor, so the count is known to be live.
"""

from __future__ import annotations

import pytest
import torch
from auglocal.workers.links.memlink import MemorySender
from auglocal.workers.runtime import worker as worker_module
from auglocal.workers.wire.messages import Kind, Message
from auglocal.workers.wire.protocol import Route, SeqMeta, validate

from tests.workers.test_worker import SIZE, Harness, config  # noqa: F401 - config is the module's fixture


class DeviceLinkSender(MemorySender):
    """A sender over a link that keeps device tensors (cuda-ipc, nccl): OobSender's `keeps_device`."""

    keeps_device = True


@pytest.fixture
def host_copies(monkeypatch) -> list[torch.Tensor]:
    copies: list[torch.Tensor] = []

    def to_host(t: torch.Tensor) -> torch.Tensor:
        copies.append(t)
        return t.detach().clone()

    monkeypatch.setattr(worker_module, "to_host", to_host)
    return copies


@pytest.mark.parametrize("device_link", [True, False])
def test_outputs_go_to_the_host_only_over_a_host_link(device_link, host_copies, config, tmp_path):  # noqa: F811
    h = Harness(config, tmp_path)
    if device_link:
        h.worker.links.outbox = DeviceLinkSender(h.downstream, h.codec)
    evaluate = Message(Kind.EVAL, "coordinator", 0, 0, tensors={"h": torch.ones(4, 3, SIZE, SIZE),
                                                                "y": torch.zeros(4, dtype=torch.long)},
                       meta=SeqMeta(0))
    for message in (h.train(0), evaluate):
        h.feed.send(message, 1000)
        h.worker.handlers[message.kind](h.worker._recv())
        out = validate(h.downstream.recv(0), Route.DOWN)
        assert out.kind is message.kind and out.tensors["h"].shape == (4, 16, SIZE, SIZE)
    if device_link:
        assert host_copies == [], f"{len(host_copies)} output(s) copied to the host over a device link"
    else:
        assert len(host_copies) == 2       # the train and the eval output: the count is live

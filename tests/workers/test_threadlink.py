"""The in-process link of thread workers: by reference, window-of-2 credits, timeouts, raw frames decoded."""

import threading

import pytest
import torch
from auglocal.workers.links.threadlink import ThreadLink
from auglocal.workers.wire.messages import Codec, Kind, Message, MessageError
from auglocal.workers.wire.protocol import TrainMeta

CODEC = Codec("run", "secret")


def train(step: int, h: torch.Tensor | None = None) -> Message:
    h = torch.randn(2, 3) if h is None else h
    return Message(Kind.TRAIN, "worker0", 0, step, tensors={"h": h, "y": torch.zeros(2, dtype=torch.int64)},
                   meta=TrainMeta(step, step))


def test_tensors_pass_by_reference_detached_from_the_producers_graph():
    link = ThreadLink(CODEC, "w1")
    w = torch.ones(3, requires_grad=True)
    h = torch.randn(2, 3) * w
    link.sender().send(train(0, h), 100)
    got = link.recv(100)
    assert got.tensors["h"].data_ptr() == h.data_ptr()        # the same memory, no copy
    assert not got.tensors["h"].requires_grad and got.meta == TrainMeta(0, 0)


def test_window_of_two_blocks_the_third_send_until_the_consumer_takes_one():
    link = ThreadLink(CODEC, "w1")
    sender = link.sender()
    sender.send(train(0), 100)
    sender.send(train(1), 100)
    assert sender.in_flight == 2
    with pytest.raises(TimeoutError, match="2 of 2"):
        sender.send(train(2), 50)
    threading.Timer(0.05, lambda: link.recv(100)).start()
    sender.send(train(2), 2000)                                # unblocked by the consumer
    assert [link.recv(100).step for _ in range(2)] == [1, 2]
    sender.wait_all(100)
    with pytest.raises(TimeoutError):
        link.recv(20)


def test_raw_frames_are_decoded_a_strangers_counted_a_peers_bad_one_raised():
    link = ThreadLink(CODEC, "w1")
    seen = []
    link.on_foreign = seen.append
    sender = link.sender()
    stranger = Codec("other", "not-the-secret")
    sender.send_raw(stranger.encode(train(0)))
    sender.send_raw(CODEC.encode(train(1)))
    assert link.recv(100).step == 1 and link.rejected == 1 and len(seen) == 1
    frames = CODEC.encode(train(2))
    frames[-1] = bytes(frames[-1])[:3]
    sender.send_raw(frames)
    with pytest.raises(MessageError):
        link.recv(100)

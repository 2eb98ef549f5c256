"""The live-tensor tracker against allocation patterns whose peak is known by hand."""

import torch

from benchmarks.live_tensors import live_bytes_from_events, tensor_bytes, track_live_bytes


def test_running_sum_of_events_in_time_order():
    # out of order on purpose: the tracker sorts by time
    events = [(3, -4000), (1, 4000), (2, 8000), (4, 2000), (5, -8000), (6, -2000)]
    found = live_bytes_from_events(events)
    assert (found.peak, found.end, found.allocations) == (12000, 0, 3)


def test_known_tensor_pattern():
    before = torch.zeros(10_000)   # alive before the block: not counted
    with track_live_bytes() as live:
        a = torch.empty(1000, dtype=torch.float32)    # 4000 B
        b = torch.empty(2000, dtype=torch.float32)    # +8000 -> 12000 (peak)
        del a                                         # 8000
        c = torch.empty(500, dtype=torch.float64)     # +4000 -> 12000 again
        del b                                         # 4000 still alive at the end (c)
    assert live.peak == 12000
    assert live.end == 4000
    assert live.allocations == 3
    assert c.numel() == 500 and before.numel() == 10_000


def test_autograd_saved_tensors_are_seen():
    """Activations saved by autograd in C++ count while alive and are gone after backward."""
    w = torch.randn(256, 256, requires_grad=True)
    x = torch.randn(64, 256)
    with track_live_bytes() as live:
        h = torch.relu(x @ w)            # 64 KB output, saved for backward
        loss = (h * h).sum()
        loss.backward()
        del h, loss
    assert live.peak >= 2 * 64 * 256 * 4      # h and h*h (or relu's mask) alive together
    assert live.end == w.grad.untyped_storage().nbytes()   # only the gradient remains


def test_tensor_bytes_counts_shared_storage_once():
    t = torch.zeros(100)
    assert tensor_bytes(iter([t, t[10:], t.view(10, 10)])) == 400


def test_freeing_a_tensor_from_before_the_block_does_not_count():
    """Old gradients freed by zero_grad at a step's start were never counted, so their free is not either."""
    before = torch.zeros(10_000)
    with track_live_bytes() as live:
        del before
        a = torch.empty(1000)
    assert (live.peak, live.end) == (4000, 4000)
    assert a.numel() == 1000

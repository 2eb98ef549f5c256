"""The shard rule and the reducers (engine/replicas.py, workers/runtime/grad_reducer.py), without a pipeline."""

import threading

import pytest
import torch
from auglocal.engine.replicas import pack, shard_sizes, split, unpack
from auglocal.workers.runtime.grad_reducer import ReplicaInfo, ThreadReducer, make_reducer
from torch import nn


@pytest.mark.parametrize("n, r", [(12, 2), (12, 5), (7, 3), (3, 3)])
def test_shard_sizes_are_tensor_splits(n, r):
    sizes = shard_sizes(n, r)
    assert sizes == [len(s) for s in torch.tensor_split(torch.arange(n), r)]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
    assert torch.equal(torch.cat(split(torch.arange(n), r)), torch.arange(n))


def test_weighted_shard_gradients_are_the_minibatchs_mean_gradient():
    """Without batch statistics the shard rule changes nothing but rounding: uneven shards (7 in 3/2/2) weighted
    by size give the gradient and loss of the whole batch's mean loss; an unweighted 1/R mean would not."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    full = [p.grad.clone() for p in net.parameters()]
    total, plain = None, None
    for xs, ys in zip(split(x, 3), split(y, 3), strict=True):
        net.zero_grad(set_to_none=True)
        shard_loss = nn.functional.cross_entropy(net(xs), ys)
        shard_loss.backward()
        flat = pack(net, shard_loss, len(ys))
        total = flat if total is None else total.add_(flat)
        g = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        plain = g / 3 if plain is None else plain + g / 3
    mean_loss = unpack(net, total)
    assert float(mean_loss) == pytest.approx(float(loss.detach()), rel=1e-6)
    for p, g in zip(net.parameters(), full, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(plain, torch.cat([g.reshape(-1) for g in full]), rtol=1e-4, atol=1e-6)


def _in_threads(count, body):
    results, errors = [None] * count, []

    def run(r):
        try:
            results[r] = body(r)
        except BaseException as err:   # noqa: BLE001 - re-raised below in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return results


def test_thread_reducer_sums_in_replica_order_and_broadcasts_replica_zero():
    torch.manual_seed(1)
    vectors = [torch.randn(1000) * 10 ** r for r in range(3)]
    expected = vectors[0].clone().add_(vectors[1]).add_(vectors[2])      # the oracle's order
    info = dict(count=3, stage=0, kind="thread", group="test-run/stage0", timeout_s=20)

    def body(r):
        reducer = make_reducer(ReplicaInfo(index=r, **info))
        assert isinstance(reducer, ThreadReducer)
        buffers = torch.full((4,), float(r))
        for _ in range(2):                       # the group is reused step after step
            mine = vectors[r].clone()
            reducer.sum(mine).wait()
            reducer.broadcast(buffers).wait()
        return mine, buffers

    for total, buffers in _in_threads(3, body):
        assert torch.equal(total, expected)
        assert torch.equal(buffers, torch.zeros(4))


def test_no_reducer_without_replicas_and_unknown_kinds_refused():
    assert make_reducer(None) is None
    assert make_reducer(ReplicaInfo(0, 1, 0, "gloo", "unused")) is None
    with pytest.raises(ValueError, match="unknown reducer kind 'mpi'"):
        make_reducer(ReplicaInfo(0, 2, 0, "mpi", "unused"))

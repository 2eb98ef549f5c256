"""Data-parallel replicas of a stage: the shard rule, the reducer interface, and the oracle's shard loop.

With `--replicas R` every minibatch of B images is cut into R shards (docs/method.md 6.1). Each replica of a
stage computes its modules' gradients on its own shard; after each module's backward the replicas sum
`n_r * (gradients, loss)` and `n_r`, and divide by the summed count, so every replica holds the gradient of
the whole minibatch's mean loss and takes the same optimizer step. The arithmetic lives here, once, so the
sequential trainer (the oracle, `train_shards`) and every pipeline replica (`ReplicaStep`) do the very same
float operations; only the summation differs (here in replica order; a reducer's order is its own, which is
exact for two operands and a rounding difference from three on).

BatchNorm running statistics follow replica 0 (as DDP's broadcast_buffers): after each module's forward its
float buffers are broadcast from replica 0, so the replicas stay identical in every tensor; the oracle keeps
the statistics of shard 0 and drops those the other shards' forwards computed.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


def shard_sizes(n: int, replicas: int) -> list[int]:
    """torch.tensor_split's sizes: the first n % R shards hold one image more."""
    return [n // replicas + (1 if r < n % replicas else 0) for r in range(replicas)]


def split(t: torch.Tensor | None, replicas: int) -> list[torch.Tensor | None]:
    """The R shards of a batch along its first dimension (contiguous, in order)."""
    if t is None:
        return [None] * replicas
    return [s.contiguous() for s in torch.tensor_split(t, replicas)]


def smallest_shard(n: int, replicas: int) -> int:
    return n // replicas


class Pending(Protocol):
    def wait(self) -> object: ...


class Reducer(Protocol):
    """How the R replicas of one stage combine tensors; every replica calls the same methods in the same order.

    Implementations: threads of one process (workers/runtime/grad_reducer.py `ThreadReducer`) and
    torch.distributed process groups, gloo on CPU and NCCL on GPU (`DistReducer`)."""

    replica: int
    replicas: int

    def sum(self, flat: torch.Tensor) -> Pending:
        """Start replacing `flat` (1-D, float32) by its sum over the replicas."""

    def broadcast(self, flat: torch.Tensor) -> Pending:
        """Start replacing `flat` by replica 0's."""


class Done:
    """A finished reduction (what an in-process reducer returns)."""

    def wait(self) -> None:
        return None


def grads_of(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None]


def float_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [b for b in module.buffers() if b is not None and b.is_floating_point()]


def pack(module: nn.Module, loss: torch.Tensor, n: int) -> torch.Tensor:
    """[n * gradients..., n * loss, n] as one float32 vector: what the replicas sum for one module."""
    parts = [g.reshape(-1) for g in grads_of(module)]
    tail = torch.stack([loss.detach().float().reshape(()), torch.ones((), device=loss.device)])
    flat = torch.cat([*[p.float() for p in parts], tail.to(parts[0].device if parts else loss.device)])
    return flat.mul_(float(n))


def unpack(module: nn.Module, flat: torch.Tensor) -> torch.Tensor:
    """Divide the summed vector by the summed count and put the mean gradients back; returns the mean loss."""
    flat[:-1].div_(flat[-1])
    offset = 0
    for g in grads_of(module):
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[-2].clone()


def pack_buffers(module: nn.Module) -> torch.Tensor | None:
    buffers = float_buffers(module)
    return torch.cat([b.reshape(-1) for b in buffers]) if buffers else None


def unpack_buffers(module: nn.Module, flat: torch.Tensor | None) -> None:
    offset = 0
    for b in float_buffers(module) if flat is not None else ():
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


class ReplicaStep:
    """A pipeline replica's reductions within one train step: started after each module's backward (so gloo
    works while the next module computes), finished before the stage's check and optimizer step."""

    def __init__(self, reducer: Reducer, n: int):
        self.reducer, self.n = reducer, n
        self.started: list[tuple[nn.Module, int, torch.Tensor, Pending, torch.Tensor | None, Pending | None]] = []

    def after_backward(self, module: nn.Module, layer: int, loss: torch.Tensor) -> None:
        flat = pack(module, loss, self.n)
        work = self.reducer.sum(flat)
        buffers = pack_buffers(module)
        bwork = self.reducer.broadcast(buffers) if buffers is not None else None
        self.started.append((module, layer, flat, work, buffers, bwork))

    def finish(self, losses: dict[int, torch.Tensor]) -> None:
        """Mean gradients into the modules, replica 0's buffers, and the minibatch's mean loss per module."""
        for module, layer, flat, work, buffers, bwork in self.started:
            work.wait()
            losses[layer] = unpack(module, flat)
            if bwork is not None:
                bwork.wait()
                unpack_buffers(module, buffers)


def train_shards(stage, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None, step: int, replicas: int):
    """The oracle of R replicas in one process: each shard's forward and backward in turn (dropout seeded per
    shard as replica r seeds it), the packed vectors summed in shard order, then the stage's own check and step."""
    from auglocal.engine.nonfinite import BufferSnapshot

    shards = list(zip(split(h, replicas), split(y, replicas), split(x, replicas), strict=True))
    sums: dict[int, torch.Tensor] = {}
    kept: list[BufferSnapshot] = []
    correct = None
    result = snapshots = None
    for r, (hs, ys, xs) in enumerate(shards):
        stage.optimizer.zero_grad(set_to_none=True)

        def collect(module, layer, loss, n=int(ys.shape[0])):
            flat = pack(module, loss, n)
            sums[layer] = flat if layer not in sums else sums[layer].add_(flat)

        out, shard_snapshots = stage.passes(hs, ys, xs, step=step, shard=r, after_backward=collect)
        if r == 0:
            result, snapshots = out, shard_snapshots
            kept = [BufferSnapshot.take(m) for m in stage.modules]    # replica 0's statistics after its forward
        if out.correct is not None:
            correct = out.correct if correct is None else correct + out.correct
    for snap in kept:
        snap.restore()
    for module in stage.modules:
        layer = module.layer_ids[0]
        result.losses[layer] = unpack(module, sums[layer])
    result.correct = correct
    result.batch_size = int(y.shape[0])
    return stage.finish_step(result, snapshots, step)


@torch.no_grad()
def eval_hits(stage, x: torch.Tensor, y: torch.Tensor, replicas: int) -> int:
    """Test hits of one batch evaluated shard by shard, as the R replicas of a pipeline evaluate it."""
    hits = 0
    for xs, ys in zip(split(x, replicas), split(y, replicas), strict=True):
        hits += int((stage.eval_step(xs).argmax(1).cpu() == ys).sum())
    return hits

"""Non-finite losses and gradients: stop the run at that step, or skip that local module's update.

Why per module: local modules touch disjoint parameters and each one's gradients come from its own loss only,
so whether a module's update is sound depends on that module alone (the fp16 `LossScaler` skip rule in
engine/precision.py, reused here). A pipeline worker holding any slice of the modules therefore decides exactly
what the sequential trainer decides, and skip mode ends bitwise equal in both.

Why cheap: the check folds each module's gradient finiteness into the loss value the stage reads back anyway
(loss + 0 * max|grad| is the loss itself when every gradient is finite, nan otherwise), so one host read of
the stage's stacked losses per step serves the decision, the metrics and the report (benchmarks/nonfinite.py
measures it). fp16 leaves gradients to its loss scaler (an overflow there is a scale too large, not
divergence) and checks the loss alone, as divergence once the scaler's scale has fallen below DIVERGED_SCALE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

#: --nonfinite choices: stop the run at the step (default), or skip the module's update and count it
POLICIES = ("stop", "skip")


#: fp16: a non-finite loss is an overflow that the module's LossScaler absorbs (update dropped, scale halved)
#: while its scale stays at least this; below it (16 halvings from 2**16 without recovering) it is divergence
DIVERGED_SCALE = 1.0


class NonFiniteLoss(RuntimeError):
    """A local module's loss (or gradient) was nan or inf at one step, under --nonfinite stop."""

    def __init__(self, epoch: int, step: int, layer: int, what: str, value: float):
        self.epoch, self.step, self.layer, self.what, self.value = epoch, step, layer, what, value
        super().__init__(self.describe())

    def describe(self) -> str:
        """The part of the one-line report both trainers print alike (epoch 1-based, as in the epoch lines)."""
        return describe(self.epoch, self.step, self.layer, self.what, self.value)


def describe(epoch: int, step: int, layer: int, what: str, value: float | str) -> str:
    return (f"non-finite {what} ({value}) at epoch {epoch + 1}, step {step}, in the local module of layer {layer}")


def drop_update(params: list[nn.Parameter]) -> None:
    """Drop a module's gradients: the optimizer then skips these parameters this step (no update, no momentum,
    no weight decay), whatever other modules of the same optimizer do. The LossScaler's skip, shared."""
    for p in params:
        p.grad = None


def folded_loss(loss: torch.Tensor, params: list[nn.Parameter], check_grads: bool) -> torch.Tensor:
    """The loss as a float32 device scalar that is non-finite when the loss or (with `check_grads`) any gradient
    of `params` is: max|g| is finite exactly when every element is (nan propagates), and 0 * it adds 0."""
    value = loss.detach().float().reshape(())
    if not check_grads:
        return value
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return value
    peak = torch.stack(torch._foreach_norm(grads, math.inf)).amax()
    return value + 0.0 * peak


@dataclass
class BufferSnapshot:
    """A module's buffers (BatchNorm running statistics) before its forward: a skipped module keeps them too,
    so a non-finite batch leaves no trace in eval mode. Taken in skip mode only."""

    buffers: list[torch.Tensor]
    saved: list[torch.Tensor]

    @classmethod
    def take(cls, module: nn.Module) -> BufferSnapshot:
        buffers = [b for b in module.buffers() if b is not None]
        return cls(buffers, [b.clone() for b in buffers])

    def restore(self) -> None:
        with torch.no_grad():
            for b, s in zip(self.buffers, self.saved, strict=True):
                b.copy_(s)


def skipped_layers(losses: dict) -> list[int]:
    """The modules (first layer ids) whose reported loss is non-finite: exactly those whose update a stage in
    skip mode skipped (the reported loss is the folded one). Both trainers count skips with it."""
    return sorted(int(k) for k, v in losses.items() if not math.isfinite(v))


def add_skips(counts: dict[str, int], layers: list[int]) -> None:
    for layer in layers:
        counts[str(layer)] = counts.get(str(layer), 0) + 1


def format_skips(counts: dict[str, int]) -> str:
    """'layer 3: 2, layer 7: 1' for the epoch line."""
    return ", ".join(f"layer {k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: int(kv[0])))


def value_text(value: float) -> str:
    """nan, inf or -inf as JSON-safe text (summary.json stays strict JSON)."""
    return str(value) if not math.isfinite(value) else repr(value)

"""The paper's optimiser and per-epoch learning-rate schedules (docs/method.md 4.2)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptimConfig:
    """SGD with Nesterov momentum and weight decay on every parameter (incl. BN, biases and aux nets)."""

    lr: float = 0.8
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.SGD:
        # foreach=False: the per-parameter loop is bitwise independent of how parameters are grouped into
        # optimizers, which is what lets K pipeline stages match one sequential optimizer exactly.
        return torch.optim.SGD(list(params), lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                               weight_decay=self.weight_decay, foreach=False)


SCHEDULES = ("cifar", "imagenet", "cosine", "constant")

#: below this many epochs the default schedule is 'cosine': the paper's CIFAR schedule spends its last epoch
#: at lr 0 (cos(pi E/E) = -1), harmless in 400 epochs, but a 1-epoch run would not train at all
SHORT_RUN_EPOCHS = 50


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a pure function of the 0-based epoch.

    kind 'cifar': cosine over e = 1..E with a linear warm-up from 0.01 over the first `warmup` epochs
    (the paper's code uses warmup = 10 for its 400-epoch runs; see `default_warmup`).
    kind 'imagenet' (alias 'cosine'): cosine over e = 0..E-1, no warm-up. kind 'constant': lr0 always.
    """

    kind: str = "cifar"
    lr0: float = 0.8
    epochs: int = 400
    warmup: int = 10

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; expected one of {', '.join(SCHEDULES)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")

    def __call__(self, epoch: int) -> float:
        if self.kind == "constant":
            return self.lr0
        if self.kind in ("imagenet", "cosine"):
            return 0.5 * self.lr0 * (1 + math.cos(math.pi * epoch / self.epochs))
        e = epoch + 1
        cosine = 0.5 * self.lr0 * (1 + math.cos(math.pi * e / self.epochs))
        if e <= self.warmup:
            w = self.warmup
            return cosine * (e - 1) / w + 0.01 * (w + 1 - e) / w
        return cosine


def default_warmup(epochs: int) -> int:
    """The paper warms up for 10 of 400 epochs; keep that fraction (rounded) for shorter runs."""
    return min(10, round(epochs * 10 / 400))

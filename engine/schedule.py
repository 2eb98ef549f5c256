"""The optimiser (the paper's SGD, or AdamW for transformers) and per-epoch learning-rate schedules
(docs/method.md 4.2)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

OPTIMIZERS = ("sgd", "adamw")

#: AdamW's settings where --lr is not given: the data sets' defaults are SGD learning rates (0.1 and up), which
#: diverge under Adam's per-parameter scaling; 1e-3 and decoupled weight decay 0.05 are the usual ViT values
ADAMW_LR = 1e-3
ADAMW_WEIGHT_DECAY = 0.05


@dataclass(frozen=True)
class OptimConfig:
    """One optimizer over every parameter (incl. BN, biases and aux nets), so an aux net always learns with
    the same rule and lr as its layer.

    kind 'sgd' (the paper's): Nesterov momentum and weight decay 1e-4. kind 'adamw' (not in the paper): what
    transformers are trained with; `weight_decay` None means ADAMW_WEIGHT_DECAY (decoupled), else 1e-4 for SGD.
    """

    lr: float = 0.8
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None
    kind: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.kind!r}; expected one of {', '.join(OPTIMIZERS)}")

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        # foreach=False: the per-parameter loop is bitwise independent of how parameters are grouped into
        # optimizers, which is what lets K pipeline stages match one sequential optimizer exactly (AdamW's
        # state, step count included, is per parameter too).
        if self.kind == "adamw":
            wd = ADAMW_WEIGHT_DECAY if self.weight_decay is None else self.weight_decay
            return torch.optim.AdamW(list(params), lr=self.lr, betas=self.betas, weight_decay=wd, foreach=False)
        wd = 1e-4 if self.weight_decay is None else self.weight_decay
        return torch.optim.SGD(list(params), lr=self.lr, momentum=self.momentum, nesterov=self.nesterov,
                               weight_decay=wd, foreach=False)


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

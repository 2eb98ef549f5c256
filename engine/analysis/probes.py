"""Linear probes: how linearly separable the classes are in each layer of a frozen network (paper Fig. 4)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

PROBE_ITERATIONS = 300
PROBE_WEIGHT_DECAY = 1e-4
#: below this many multiply-adds per evaluation (examples x features x classes) the probe runs on one thread
SINGLE_THREAD_WORK = 1 << 22


@dataclass(frozen=True)
class ProbeResult:
    """Accuracy (%) of one layer's linear probe on the features it was fitted to and on held-out features."""

    train_accuracy: float
    test_accuracy: float


@contextlib.contextmanager
def _threads_for(work: int) -> Iterator[None]:
    """One torch thread for small probes, restored afterwards.

    A small probe makes thousands of calls on tiny matrices, where worker threads only add synchronisation:
    on a busy machine that made a 64 x 64 probe 45 times slower than on one thread.
    """
    before = torch.get_num_threads()
    if work < SINGLE_THREAD_WORK and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(dim=1) == labels).double().mean())


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
              num_classes: int, iterations: int = PROBE_ITERATIONS,
              weight_decay: float = PROBE_WEIGHT_DECAY) -> ProbeResult:
    """Multinomial logistic regression on (n, C) features, fitted full-batch with L-BFGS; accuracies in %.

    Features are standardised with the training features' mean and std so one weight decay and one
    iteration budget suit every layer, whatever its scale. The problem is convex and the weights start at
    zero, so the fit is deterministic and needs no seed. It runs in float64, where L-BFGS' line search is
    reliable at the small gradients near the optimum.
    """
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"probe features must be (n, C) with the same C for train and test, got "
                         f"{tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ValueError("probe features and labels must have the same number of examples")
    mean = train_x.double().mean(dim=0)
    std = train_x.double().std(dim=0, unbiased=False).clamp_min(1e-8)
    xs, xt = (train_x.double() - mean) / std, (test_x.double() - mean) / std
    weight = torch.zeros(num_classes, xs.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(xs @ weight.T + bias, train_y) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _threads_for(xs.shape[0] * xs.shape[1] * num_classes):
        optimizer.step(closure)
    with torch.no_grad():
        return ProbeResult(train_accuracy=_accuracy(xs @ weight.T + bias, train_y),
                           test_accuracy=_accuracy(xt @ weight.T + bias, test_y))


def probe_layers(train_features: list[torch.Tensor], train_y: torch.Tensor, test_features: list[torch.Tensor],
                 test_y: torch.Tensor, num_classes: int,
                 iterations: int = PROBE_ITERATIONS) -> list[ProbeResult]:
    """One independent linear probe per layer (lists of per-layer (n, C) features, layer 0 first)."""
    if len(train_features) != len(test_features):
        raise ValueError(f"{len(train_features)} layers of training features but {len(test_features)} "
                         "of test features")
    return [fit_probe(a, train_y, b, test_y, num_classes, iterations)
            for a, b in zip(train_features, test_features, strict=True)]

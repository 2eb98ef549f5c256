"""The sequential trainers: the paper's simultaneous scheme and end-to-end BP, in one process.

This is the oracle of the project: every pipelined run must end with the weights this trainer computes.
BP is the same trainer with no aux nets (one module, the whole network trained by the global loss).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from auglocal.engine.feed import EpochEnd, EvalBatch, FeedShape, TrainStep, feed_plan
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.models.base import LayeredModel
from auglocal.engine.nonfinite import add_skips, skipped_layers
from auglocal.engine.precision import Kernels
from auglocal.engine.replicas import eval_hits, train_shards
from auglocal.engine.schedule import LRSchedule, OptimConfig
from auglocal.engine.stage import Stage, StepResult
from torch import nn


@dataclass
class StepRecord:
    """Metrics of one training minibatch, as written to the metrics JSON lines."""

    epoch: int
    step: int
    global_step: int
    loss: float
    accuracy: float
    lr: float
    images_per_s: float
    local_losses: dict[int, float] = field(default_factory=dict)
    images: int = 0


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    best_accuracy: float
    seconds: float
    skipped: dict[str, int] = field(default_factory=dict)   # module updates skipped this epoch (--nonfinite skip),
                                                             # by first layer id (engine/nonfinite.py)


def evaluate(model: nn.Module, batches, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy (%) of the primary network alone, in eval mode."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x.to(device))
            correct += int((logits.argmax(1).cpu() == y).sum())
            total += int(y.shape[0])
    model.train()
    return 100.0 * correct / max(total, 1)


class SequentialTrainer:
    """One Stage holding every local module: layer l's aux forward/backward completes before layer l+1."""

    def __init__(self, model: LayeredModel, aux_nets: list[nn.Module], optim: OptimConfig,
                 schedule: LRSchedule, seed: int = 0, device: torch.device | str = "cpu",
                 kernels: Kernels | None = None, nonfinite: str | None = "stop", replicas: int = 1):
        self.model = model
        self.replicas = replicas   # > 1: the oracle of --replicas R (engine/replicas.py train_shards)
        self.aux_nets = nn.ModuleList(aux_nets)
        self.device = torch.device(device)
        self.stage = Stage(build_local_modules(model, list(aux_nets)), optim, schedule, seed, self.device, kernels,
                           nonfinite=nonfinite)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> StepResult:
        if self.stage.epoch != epoch:
            self.stage.set_epoch(epoch)
        if self.replicas > 1:
            return train_shards(self.stage, x, y, x if self.stage.needs_input else None, step, self.replicas)
        return self.stage.train_step(x, y, x if self.stage.needs_input else None, step=step)

    def fit(self, data, epochs: int, batch_size: int, *, max_steps: int | None = None,
            on_step: Callable[[StepRecord], None] | None = None,
            on_epoch: Callable[[EpochRecord], None] | None = None) -> list[EpochRecord]:
        """Train for `epochs` (or until `max_steps` minibatches), evaluating after every epoch.

        The order of steps and evaluations is the feed plan's (engine/feed.py), the same the pipeline's
        coordinator feeds; checkpoint markers mean nothing in one process and are skipped. Under --nonfinite stop
        a non-finite loss raises auglocal.engine.nonfinite.NonFiniteLoss out of here."""
        shape = FeedShape(epochs, data.steps_per_epoch(batch_size), data.num_test_batches(batch_size), max_steps)
        history: list[EpochRecord] = []
        best = 0.0
        t_epoch = time.perf_counter()
        loss_sum = correct = seen = 0.0
        hits = tested = 0
        skipped: dict[str, int] = {}
        for event in feed_plan(shape):
            if isinstance(event, TrainStep):
                t0 = time.perf_counter()
                x, y = data.train_batch(self.stage.seed, event.epoch, event.step, batch_size)
                res = self.train_step(x, y, event.epoch, event.step)
                losses = res.loss_values()
                top_loss = losses[max(losses)]
                add_skips(skipped, skipped_layers(losses))
                n = res.batch_size
                loss_sum += top_loss * n
                correct += float(res.correct)
                seen += n
                if on_step is not None:
                    on_step(StepRecord(event.epoch, event.step, event.global_step + 1, top_loss,
                                       100.0 * float(res.correct) / n, self.stage.schedule(event.epoch),
                                       n / (time.perf_counter() - t0), losses, n))
            elif isinstance(event, EvalBatch):
                x, y = data.test_batch(event.index, batch_size)
                if self.replicas > 1:
                    hits += eval_hits(self.stage, x, y, self.replicas)
                else:
                    hits += int((self.stage.eval_step(x).argmax(1).cpu() == y).sum())
                tested += int(y.shape[0])
            elif isinstance(event, EpochEnd):
                acc = 100.0 * hits / max(tested, 1)
                best = max(best, acc)
                record = EpochRecord(event.epoch, loss_sum / seen, 100.0 * correct / seen, acc, best,
                                     time.perf_counter() - t_epoch, skipped)
                history.append(record)
                if on_epoch is not None:
                    on_epoch(record)
                loss_sum = correct = seen = 0.0
                hits = tested = 0
                skipped = {}
                t_epoch = time.perf_counter()
        return history

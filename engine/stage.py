"""A stage: consecutive local modules with their optimizer; the unit of work of trainer and worker alike."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from auglocal.engine.local_module import LocalModule
from auglocal.engine.nonfinite import DIVERGED_SCALE, POLICIES, BufferSnapshot, NonFiniteLoss, drop_update, folded_loss
from auglocal.engine.precision import Kernels, LossScaler
from auglocal.engine.replicas import Reducer, ReplicaStep
from auglocal.engine.schedule import LRSchedule, OptimConfig
from torch import nn

_MASK64 = (1 << 63) - 1


def _draws_random(layer: nn.Module) -> bool:
    """Whether a layer draws from the torch RNG in training (dropout, torchvision's stochastic depth)."""
    return isinstance(layer, nn.modules.dropout._DropoutNd) or type(layer).__name__ == "StochasticDepth"


def step_seed(seed: int, epoch: int, step: int, layer: int, *shard: int) -> int:
    """Seed of the torch RNG for one module at one step: dropout in any layer is reproducible no matter
    which process runs the layer, so a pipelined run draws exactly the masks the sequential one draws.
    `shard` (replicas 1.., engine/replicas.py) gives every shard of a minibatch masks of its own."""
    h = seed & _MASK64
    for v in (epoch, step, layer, *shard):
        h = (h * 6364136223846793005 + v + 1442695040888963407) & _MASK64
    return h


@dataclass
class StepResult:
    """What one training step of a stage produced; tensors stay on the device until someone asks."""

    output: torch.Tensor
    losses: dict[int, torch.Tensor] = field(default_factory=dict)   # first layer id of module -> loss
    correct: torch.Tensor | None = None                                # top stage only
    batch_size: int = 0
    values: dict[int, float] | None = None    # the losses as read back once by the check (folded: nan when a
                                              # gradient was not finite); None when the stage does not check
    skipped: list[int] = field(default_factory=list)   # modules (first layer ids) whose update was skipped

    def loss_values(self) -> dict[int, float]:
        if self.values is not None:
            return dict(self.values)
        return {k: float(v) for k, v in self.losses.items()}


class Stage:
    """Runs `modules` in order with the paper's simultaneous scheme (docs/method.md 4.1) and one optimizer.

    For each module: primary forward, local (or global) loss, backward at once (which frees that module's
    graph), then detach the output and go on; one optimizer step after the last module. Because modules
    touch disjoint parameters and SGD updates each parameter independently, splitting a network into
    several stages changes nothing in the arithmetic: the sequential trainer is simply one stage holding
    every module, and a pipeline worker holds a slice. `emit` is called with the stage output as soon as the
    last module's primary forward is done, before its aux work, so a worker can send it downstream early.

    `kernels` (memory format, autocast precision) is applied here and only here: modules are converted to the
    format, every module input is laid out in it, every forward and loss runs under autocast and every
    hand-off is in the activation dtype, so trainer and workers run the same kernels on the same tensors.
    Weights and optimizer state stay float32; fp16 scales each module's loss by its own `LossScaler`.

    `nonfinite` says what a non-finite loss or gradient of a module does (engine/nonfinite.py): 'stop' raises
    NonFiniteLoss before the optimizer step, 'skip' drops that module's update (and restores its buffers) and
    counts it in `skipped`; None does not check (benchmarks/nonfinite.py measures the check's cost with it).
    """

    def __init__(self, modules: list[LocalModule], optim: OptimConfig, schedule: LRSchedule, seed: int = 0,
                 device: torch.device | str = "cpu", kernels: Kernels | None = None, nonfinite: str | None = "stop"):
        if not modules:
            raise ValueError("a stage needs at least one local module")
        if nonfinite is not None and nonfinite not in POLICIES:
            raise ValueError(f"unknown non-finite policy {nonfinite!r}; expected one of {', '.join(POLICIES)}")
        self.nonfinite = nonfinite
        self.skipped = {m.layer_ids[0]: 0 for m in modules}   # updates skipped per module (first layer id)
        self.modules = nn.ModuleList(modules)
        self.device = torch.device(device)
        self.kernels = kernels or Kernels.default(self.device)   # = a default RunConfig's options
        self.modules.to(self.device, memory_format=self.kernels.torch_memory_format)
        self.scalers = ({m.layer_ids[0]: LossScaler() for m in modules} if self.kernels.precision == "fp16"
                        else None)
        self.schedule = schedule
        self.seed = seed
        self.optimizer = optim.build(self.modules.parameters())
        self.update_counts = {i: 0 for m in modules for i in m.layer_ids}
        self.last_applied: tuple[int, int] | None = None   # (epoch, step) of the last minibatch trained on
        self.epoch = -1
        self.set_epoch(0)
        # Shared by every stage of one process whose stages run in threads (workers/runtime/host.py): the global RNG is
        # per process, so a module that draws random numbers seeds and runs under it; the others skip the seed.
        self.rng_lock: AbstractContextManager | None = None
        self._random = [any(_draws_random(m) for m in module.modules()) for module in modules]
        self.reducer: Reducer | None = None   # a pipeline replica's peers (engine/replicas.py); None: alone
        self.shard = 0                        # which shard of each minibatch this replica trains on

    @property
    def layer_ids(self) -> list[int]:
        return [i for m in self.modules for i in m.layer_ids]

    @property
    def needs_input(self) -> bool:
        return any(m.needs_input for m in self.modules)

    def set_epoch(self, epoch: int) -> None:
        """Set the learning rate of this epoch (the schedule is per epoch, as in the paper)."""
        self.epoch = epoch
        lr = self.schedule(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None, *, step: int = 0,
                   emit: Callable[[torch.Tensor], None] | None = None) -> StepResult:
        """One minibatch through every module of the stage, then one optimizer step. A replica (`reducer` set,
        engine/replicas.py) averages each module's gradients with its peers right after that module's backward."""
        self.modules.train()
        self.optimizer.zero_grad(set_to_none=True)
        replica = ReplicaStep(self.reducer, int(y.shape[0])) if self.reducer is not None else None
        result, snapshots = self.passes(h, y, x, step=step, emit=emit, shard=self.shard,
                                        after_backward=replica.after_backward if replica else None)
        if replica is not None:
            replica.finish(result.losses)
        return self.finish_step(result, snapshots, step)

    def passes(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None, *, step: int = 0,
               emit: Callable[[torch.Tensor], None] | None = None, shard: int = 0,
               after_backward: Callable[[LocalModule, int, torch.Tensor], None] | None = None
               ) -> tuple[StepResult, list[BufferSnapshot]]:
        """Forward, loss and backward of every module (docs/method.md 4.1), without the optimizer step."""
        self.modules.train()
        kernels = self.kernels
        h = h.to(self.device, non_blocking=True).detach()
        y = y.to(self.device, non_blocking=True)
        x = kernels.layout(x.to(self.device, non_blocking=True)) if x is not None else None
        result = StepResult(output=h, batch_size=int(y.shape[0]))
        last = len(self.modules) - 1
        snapshots: list[BufferSnapshot] = []
        for i, module in enumerate(self.modules):
            if self.nonfinite == "skip":
                snapshots.append(BufferSnapshot.take(module))
            locked = self.rng_lock is not None and self._random[i]
            with self.rng_lock if locked else nullcontext():
                if self.rng_lock is None or locked:
                    torch.manual_seed(step_seed(self.seed, self.epoch, step, module.layer_ids[0],
                                                *((shard,) if shard else ())))
                h = kernels.layout(h)
                with kernels.autocast(self.device):
                    out = module(h)
                    handoff = kernels.handoff(out) if not module.is_top else out.detach()
                    if i == last and emit is not None and not module.is_top and not locked:
                        emit(handoff)
                    loss = module.loss(out, y, x)
            if locked and i == last and emit is not None and not module.is_top:
                emit(handoff)    # never block on a full link while holding the process's RNG
            if self.scalers is None:
                loss.backward()
            else:
                scaler = self.scalers[module.layer_ids[0]]
                scaler.backward(loss)
                scaler.unscale(list(module.parameters()))
            result.losses[module.layer_ids[0]] = loss.detach()
            if after_backward is not None:
                after_backward(module, module.layer_ids[0], loss)
            if module.is_top:
                result.correct = (out.detach().argmax(1) == y).sum()
            h = handoff
        result.output = h
        return result, snapshots

    def finish_step(self, result: StepResult, snapshots: list[BufferSnapshot], step: int) -> StepResult:
        """The non-finite check of every module's (loss, gradients), then the optimizer step."""
        if self.nonfinite is not None:
            checked = [folded_loss(result.losses[m.layer_ids[0]], list(m.parameters()),
                                   check_grads=self.scalers is None) for m in self.modules]
            self._check(result, checked, snapshots, step)
        self.optimizer.step()
        for i in self.update_counts:
            self.update_counts[i] += 1
        self.last_applied = (self.epoch, step)
        return result

    def _check(self, result: StepResult, checked: list[torch.Tensor], snapshots: list[BufferSnapshot],
               step: int) -> None:
        """Decide each module's update from its own folded loss, read back in one transfer for the whole stage.

        Every module whose reported loss is non-finite counts in `skipped`: updates this check skips, and fp16
        overflows whose update the module's loss scaler already dropped (those stop nothing while the scale is
        at least DIVERGED_SCALE)."""
        values = torch.stack(checked).tolist()
        result.values = {m.layer_ids[0]: v for m, v in zip(self.modules, values, strict=True)}
        for i, (module, value) in enumerate(zip(self.modules, values, strict=True)):
            if math.isfinite(value):
                continue
            layer = module.layer_ids[0]
            scaler = self.scalers[layer] if self.scalers is not None else None
            if scaler is None or scaler.scale < DIVERGED_SCALE:    # not an fp16 overflow the scaler absorbs
                if self.nonfinite == "stop":
                    loss = float(result.losses[layer])
                    what, shown = ("loss", loss) if not math.isfinite(loss) else ("gradient", value)
                    raise NonFiniteLoss(self.epoch, step, layer, what, shown)
                drop_update(list(module.parameters()))
                snapshots[i].restore()
            self.skipped[layer] += 1
            result.skipped.append(layer)

    @torch.no_grad()
    def eval_step(self, h: torch.Tensor) -> torch.Tensor:
        """Primary network only, in eval mode (BN running statistics); aux nets are not run."""
        self.modules.eval()
        h = h.to(self.device, non_blocking=True)
        for module in self.modules:
            with self.kernels.autocast(self.device):
                out = module(self.kernels.layout(h))
            h = out if module.is_top else self.kernels.handoff(out)
        return h

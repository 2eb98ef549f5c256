"""The paper's learning-rate schedules (docs/method.md 4.2) and optimiser settings, and AdamW's."""

import math

import pytest
import torch
from auglocal.engine.schedule import LRSchedule, OptimConfig, default_warmup


def paper_cifar_lr(e: int, lr0: float, total: int) -> float:
    """docs/method.md 4.2 written out literally, e = 1..E."""
    if e <= 10:
        return 0.5 * lr0 * (1 + math.cos(math.pi * e / total)) * (e - 1) / 10 + 0.01 * (11 - e) / 10
    return 0.5 * lr0 * (1 + math.cos(math.pi * e / total))


@pytest.mark.parametrize("epoch", [0, 1, 5, 9, 10, 11, 200, 399])
def test_cifar_schedule_matches_paper_formula(epoch):
    s = LRSchedule("cifar", 0.8, 400, 10)
    assert s(epoch) == pytest.approx(paper_cifar_lr(epoch + 1, 0.8, 400), rel=1e-12)


def test_cifar_schedule_starts_at_001_and_ends_at_zero():
    s = LRSchedule("cifar", 0.8, 400, 10)
    assert s(0) == pytest.approx(0.01)
    assert s(399) == pytest.approx(0.0, abs=1e-12)
    assert max(s(e) for e in range(400)) < 0.8


def test_imagenet_schedule_is_cosine_from_epoch_zero():
    s = LRSchedule("imagenet", 0.4, 200, 0)
    assert s(0) == pytest.approx(0.4)
    assert s(100) == pytest.approx(0.2)


def test_default_warmup_keeps_the_paper_fraction():
    assert default_warmup(400) == 10
    assert default_warmup(3) == 0
    assert default_warmup(40) == 1


def test_bad_schedule_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule("step", 0.1, 10)


def test_optimizer_is_sgd_nesterov_with_decay_on_everything():
    p = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    opt = OptimConfig(lr=0.1).build(p)
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert (g["momentum"], g["nesterov"], g["weight_decay"]) == (0.9, True, 1e-4)
    assert len(g["params"]) == 2


def test_short_runs_default_to_a_cosine_that_trains_every_epoch():
    from auglocal.engine.config import RunConfig, resolve
    from auglocal.engine.data import build_dataset

    data = build_dataset("synthetic", train_size=8, test_size=4)
    short = resolve(RunConfig(dataset="synthetic", epochs=1), data)
    assert short.schedule == "cosine"
    assert LRSchedule(short.schedule, 0.1, 1, short.warmup)(0) == pytest.approx(0.1)   # the paper's would be 0
    assert LRSchedule("cifar", 0.1, 1, 0)(0) == pytest.approx(0.0)
    long = resolve(RunConfig(dataset="synthetic", epochs=400), data)
    assert (long.schedule, long.warmup) == ("cifar", 10)
    explicit = resolve(RunConfig(dataset="synthetic", epochs=3, schedule="cifar"), data)
    assert explicit.schedule == "cifar"


def test_adamw_is_decoupled_with_per_parameter_loops():
    from auglocal.engine.schedule import ADAMW_WEIGHT_DECAY

    p = [torch.nn.Parameter(torch.ones(3))]
    opt = OptimConfig(lr=1e-3, kind="adamw").build(p)
    g = opt.param_groups[0]
    assert type(opt) is torch.optim.AdamW
    assert (g["lr"], g["betas"], g["weight_decay"], g["foreach"]) == (1e-3, (0.9, 0.999), ADAMW_WEIGHT_DECAY, False)
    assert OptimConfig(lr=0.1).build(p).param_groups[0]["foreach"] is False


def test_adamw_defaults_to_an_adam_learning_rate_and_an_unknown_optimizer_is_named():
    from auglocal.engine.config import RunConfig, UsageError, optim_and_schedule, resolve, validate
    from auglocal.engine.data import build_dataset
    from auglocal.engine.schedule import ADAMW_LR

    data = build_dataset("synthetic", train_size=8, test_size=4)
    assert resolve(RunConfig(dataset="synthetic", optimizer="adamw"), data).lr == ADAMW_LR
    assert resolve(RunConfig(dataset="synthetic"), data).lr == data.default_lr != ADAMW_LR
    assert resolve(RunConfig(dataset="synthetic", optimizer="adamw", lr=0.01), data).lr == 0.01
    optim, _ = optim_and_schedule(resolve(RunConfig(dataset="synthetic", optimizer="adamw"), data))
    assert optim.kind == "adamw"
    with pytest.raises(UsageError, match="--optimizer must be one of sgd, adamw, got 'adam'"):
        validate(RunConfig(optimizer="adam"))

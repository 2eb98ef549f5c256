"""Per-layer state files: any partition writes them, any partition reads them back exactly."""

from dataclasses import replace

import pytest
import torch
from auglocal.engine.config import RunConfig, build_network, optim_and_schedule
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.stage import Stage
from auglocal.workers.runtime.layer_files import (
    DIGEST,
    digest,
    layer_file,
    load_layers_into,
    load_stage_layers,
    save_stage_layers,
)

CFG = RunConfig(model="resnet20", rule="auglocal", d=3, dataset="synthetic", input_size=8, num_classes=4,
                batch_size=4, lr=0.1, seed=11, schedule="constant")


def stages(split: list[int], cfg: RunConfig = CFG) -> list[Stage]:
    """The network cut into stages at the module indices in `split` (fresh, identical weights every call)."""
    model, aux = build_network(cfg)
    modules = build_local_modules(model, aux)
    optim, schedule = optim_and_schedule(cfg)
    bounds = [0, *split, len(modules)]
    return [Stage(modules[a:b], optim, schedule, seed=cfg.seed) for a, b in zip(bounds, bounds[1:], strict=False)]


def train_one_step(stage_list: list[Stage], seed: int = 0) -> None:
    torch.manual_seed(seed)
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    h = x
    for stage in stage_list:
        h = stage.train_step(h, y, x if stage.needs_input else None, step=0).output


def test_files_written_by_two_workers_load_into_one(tmp_path):
    two = stages([3])
    train_one_step(two)
    for stage in two:
        save_stage_layers(stage, tmp_path)
    (one,) = stages([])
    load_stage_layers(one, tmp_path)
    assert one.last_applied == (0, 0) and set(one.update_counts.values()) == {1}
    buffers = [b for s in two for b in s.modules.buffers()]
    assert all(torch.equal(a, b) for a, b in zip(one.modules.buffers(), buffers, strict=True))
    after = [p for s in two for p in s.modules.parameters()]
    for p_one, p_two in zip(one.modules.parameters(), after, strict=True):
        assert torch.equal(p_one, p_two)
        assert torch.equal(one.optimizer.state[p_one]["momentum_buffer"], two_momentum(two, p_two))


def two_momentum(two: list[Stage], p: torch.Tensor) -> torch.Tensor:
    return next(s.optimizer.state[p]["momentum_buffer"] for s in two if p in s.optimizer.state)


def test_layers_of_different_minibatches_are_not_a_consistent_cut(tmp_path):
    (stage,) = stages([])
    save_stage_layers(stage, tmp_path)               # nothing applied yet
    train_one_step([stage])
    torch.save({**torch.load(layer_file(tmp_path, 0), weights_only=True), "last_applied": [0, 0]},
               layer_file(tmp_path, 0))
    (fresh,) = stages([])
    with pytest.raises(ValueError, match="consistent cut"):
        load_stage_layers(fresh, tmp_path)


def test_assembled_network_equals_the_trained_one(tmp_path):
    (stage,) = stages([])
    train_one_step([stage])
    save_stage_layers(stage, tmp_path)
    model, aux = build_network(CFG)
    updates = load_layers_into(model, aux, tmp_path)
    assert set(updates.values()) == {1} and len(updates) == model.num_layers
    trained = dict(stage.modules.named_parameters())
    assert len(trained) == len(list(model.parameters())) + sum(len(list(a.parameters())) for a in aux)
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    with torch.no_grad():     # the stage runs channels_last kernels, the bare model NCHW: equal up to float order
        torch.testing.assert_close(model(x), stage.eval_step(x))


def test_adamw_state_written_by_two_workers_loads_into_one_and_trains_on_the_same(tmp_path):
    """Every entry of AdamW's per-parameter state (step count, both moments) travels through the files: a stage
    restored from them takes its next step exactly as the stages that wrote them (bias correction included)."""
    cfg = replace(CFG, optimizer="adamw", lr=1e-3)
    two = stages([3], cfg)
    train_one_step(two)
    for stage in two:
        save_stage_layers(stage, tmp_path)
    (one,) = stages([], cfg)
    load_stage_layers(one, tmp_path)
    after = [p for s in two for p in s.modules.parameters()]
    for p_one, p_two in zip(one.modules.parameters(), after, strict=True):
        mine = one.optimizer.state[p_one]
        theirs = next(s.optimizer.state[p_two] for s in two if p_two in s.optimizer.state)
        assert sorted(mine) == sorted(theirs) == ["exp_avg", "exp_avg_sq", "step"]
        assert all(torch.equal(mine[k], theirs[k]) for k in mine) and mine["step"].device.type == "cpu"
    train_one_step([one], seed=1)
    train_one_step(two, seed=1)
    for p_one, p_two in zip(one.modules.parameters(), after, strict=True):
        assert torch.equal(p_one, p_two)


def test_a_file_from_before_the_optimizer_choice_restores_its_momentum(tmp_path):
    """Older files hold `<part>_momentum`, one SGD momentum buffer (or None) per parameter."""
    (stage,) = stages([])
    train_one_step([stage])
    save_stage_layers(stage, tmp_path)
    for path in tmp_path.iterdir():
        state = torch.load(path, weights_only=True)
        old = {k: v for k, v in state.items() if k != DIGEST and not k.endswith("_optim")}
        for part in ("layer", "aux", "head"):
            if f"{part}_optim" in state:
                old[f"{part}_momentum"] = [s.get("momentum_buffer") for s in state[f"{part}_optim"]]
        torch.save({**old, DIGEST: digest(old)}, path)
    (fresh,) = stages([])
    load_stage_layers(fresh, tmp_path)
    for p_fresh, p in zip(fresh.modules.parameters(), stage.modules.parameters(), strict=True):
        restored, saved = fresh.optimizer.state[p_fresh], stage.optimizer.state[p]
        assert torch.equal(restored["momentum_buffer"], saved["momentum_buffer"])

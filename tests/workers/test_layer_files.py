"""Per-layer state files: any partition writes them, any partition reads them back exactly."""

import pytest
import torch
from auglocal.engine.config import RunConfig, build_network, optim_and_schedule
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.stage import Stage
from auglocal.workers.runtime.layer_files import layer_file, load_layers_into, load_stage_layers, save_stage_layers

CFG = RunConfig(model="resnet20", rule="auglocal", d=3, dataset="synthetic", input_size=8, num_classes=4,
                batch_size=4, lr=0.1, seed=11, schedule="constant")


def stages(split: list[int]) -> list[Stage]:
    """The network cut into stages at the module indices in `split` (fresh, identical weights every call)."""
    model, aux = build_network(CFG)
    modules = build_local_modules(model, aux)
    optim, schedule = optim_and_schedule(CFG)
    bounds = [0, *split, len(modules)]
    return [Stage(modules[a:b], optim, schedule, seed=CFG.seed) for a, b in zip(bounds, bounds[1:], strict=False)]


def train_one_step(stage_list: list[Stage]) -> None:
    torch.manual_seed(0)
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

"""The stage's non-finite check (engine/nonfinite.py): each local module decides from its own loss (or gradient)
whether its update stands, stops the run there (--nonfinite stop) or skips it (--nonfinite skip)."""

import copy
import math

import pytest
import torch
from auglocal.engine.auxnets import build_aux_nets
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.models import build_model
from auglocal.engine.nonfinite import NonFiniteLoss, folded_loss, skipped_layers
from auglocal.engine.schedule import LRSchedule, OptimConfig
from auglocal.engine.stage import Stage

SCHED = LRSchedule("constant", 0.1, 1, 0)
BAD = 1        # the module whose aux net is poisoned


def modules(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("resnet20", num_classes=4, input_size=16)
    return model, build_local_modules(model, build_aux_nets(model, "auglocal", d=3, tau=0.5))


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 4, (6,), generator=g)


def poison_aux(mods) -> None:
    """One weight of module BAD's aux net becomes nan: its loss is nan, its primary output stays finite."""
    with torch.no_grad():
        next(mods[BAD].aux.parameters()).view(-1)[0] = float("nan")


def state(mods) -> list[dict]:
    return [copy.deepcopy(m.state_dict()) for m in mods]


def assert_equal_state(a: dict, b: dict) -> None:
    for k, v in a.items():
        assert torch.equal(torch.nan_to_num(v.float()), torch.nan_to_num(b[k].float())), k


def test_skip_drops_exactly_the_bad_modules_update_and_buffers_in_any_partition():
    torch.set_num_threads(1)
    _, mods = modules()
    poison_aux(mods)
    mods_b = copy.deepcopy(mods)
    before = state(mods)
    one = Stage(mods, OptimConfig(0.1), SCHED, nonfinite="skip")
    x, y = batch()
    result = one.train_step(x, y, step=0)
    bad = mods[BAD].layer_ids[0]
    assert result.skipped == [bad]
    assert one.skipped == {m.layer_ids[0]: int(i == BAD) for i, m in enumerate(mods)}
    assert math.isnan(result.loss_values()[bad])
    assert skipped_layers(result.loss_values()) == [bad]
    assert_equal_state(mods[BAD].state_dict(), before[BAD])          # weights and BN running statistics
    assert all(p not in one.optimizer.state for p in mods[BAD].parameters())   # no momentum either
    for i in (0, 2, len(mods) - 1):
        changed = [k for k, v in mods[i].state_dict().items() if not torch.equal(v, before[i][k])]
        assert changed, f"module {i} did not train"
    two = [Stage(mods_b[:2], OptimConfig(0.1), SCHED, nonfinite="skip"),
           Stage(mods_b[2:], OptimConfig(0.1), SCHED, nonfinite="skip")]
    h = x
    skipped = []
    for s in two:
        r = s.train_step(h, y, step=0)
        h, skipped = r.output, skipped + r.skipped
    assert skipped == [bad]
    for a, b in zip(mods, mods_b, strict=True):
        assert_equal_state(a.state_dict(), b.state_dict())


def test_stop_raises_before_any_update_naming_step_and_layer():
    torch.set_num_threads(1)
    _, mods = modules()
    poison_aux(mods)
    before = state(mods)
    stage = Stage(mods, OptimConfig(0.1), SCHED)           # stop is the default
    stage.set_epoch(0)
    x, y = batch()
    with pytest.raises(NonFiniteLoss) as caught:
        stage.train_step(x, y, step=5)
    err = caught.value
    assert (err.epoch, err.step, err.layer, err.what) == (0, 5, mods[BAD].layer_ids[0], "loss")
    assert math.isnan(err.value)
    assert f"at epoch 1, step 5, in the local module of layer {err.layer}" in str(err)
    for i, m in enumerate(mods):
        params = {k for k, _ in m.named_parameters()}
        assert all(torch.equal(torch.nan_to_num(v), torch.nan_to_num(before[i][k]))
                   for k, v in m.state_dict().items() if k in params), f"module {i} was updated"
    assert stage.update_counts[err.layer] == 0 and stage.last_applied is None


def test_a_non_finite_gradient_behind_a_finite_loss_is_caught_too():
    torch.set_num_threads(1)
    x, y = batch()
    for policy in ("stop", "skip"):
        _, mods = modules()
        next(mods[BAD].layers[0].parameters()).register_hook(lambda g: g * float("inf"))
        stage = Stage(mods, OptimConfig(0.1), SCHED, nonfinite=policy)
        if policy == "stop":
            with pytest.raises(NonFiniteLoss) as caught:
                stage.train_step(x, y, step=0)
            assert (caught.value.layer, caught.value.what) == (mods[BAD].layer_ids[0], "gradient")
        else:
            result = stage.train_step(x, y, step=0)
            assert result.skipped == [mods[BAD].layer_ids[0]]
            assert math.isfinite(float(result.losses[mods[BAD].layer_ids[0]]))   # the loss itself was finite


def test_folded_loss_is_the_loss_bit_for_bit_when_gradients_are_finite():
    p = torch.nn.Parameter(torch.tensor([1.0, -3.0]))
    loss = (p ** 2).sum() * 0.1
    loss.backward()
    assert folded_loss(loss, [p], check_grads=True).item() == loss.item()
    p.grad[1] = float("inf")
    assert math.isnan(folded_loss(loss, [p], check_grads=True).item())
    assert folded_loss(loss, [p], check_grads=False).item() == loss.item()


def test_unknown_policy_is_refused():
    _, mods = modules()
    with pytest.raises(ValueError, match="stop, skip"):
        Stage(mods[:1], OptimConfig(0.1), SCHED, nonfinite="ignore")

"""The sequential trainer against a step computed by hand, and BP/AugLocal sharing one primary network."""

import copy

import pytest
import torch
import torch.nn.functional as F
from auglocal.engine.auxnets import build_aux_nets
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.models import build_model
from auglocal.engine.precision import Kernels
from auglocal.engine.schedule import LRSchedule, OptimConfig
from auglocal.engine.stage import Stage
from auglocal.engine.trainer import SequentialTrainer, evaluate

LR, MOMENTUM, WD = 0.05, 0.9, 1e-4


def make(rule: str, d: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("resnet20", num_classes=5)
    aux = build_aux_nets(model, rule, d=d, tau=0.5)
    return model, aux


def batch(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g)


def hand_step(model, aux_nets, x, y):
    """docs/method.md 4.1 written out: per layer forward, local CE, grads, detach; global CE; one SGD step."""
    losses, grads = [], {}
    h = x
    for i, layer in enumerate(model.layers):
        h = layer(h)
        if i < len(aux_nets):
            loss = aux_nets[i](h, y, x)
            params = list(layer.parameters()) + list(aux_nets[i].parameters())
            for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
                grads[p] = g
            losses.append(loss.detach())
            h = h.detach()
    logits = model.head(h)
    top = F.cross_entropy(logits, y)
    n = len(aux_nets)
    params = [p for layer in model.layers[n:] for p in layer.parameters()] + list(model.head.parameters())
    for p, g in zip(params, torch.autograd.grad(top, params), strict=True):
        grads[p] = g
    losses.append(top.detach())
    with torch.no_grad():
        for p, g in grads.items():   # first step: momentum buffer = d_p, Nesterov: d_p + momentum * buf
            d_p = g + WD * p
            p -= LR * (d_p + MOMENTUM * d_p)
    return losses, grads


@pytest.mark.parametrize("rule", ["auglocal", "dgl", "predsim", "infopro", "bp"])
def test_one_sequential_step_equals_hand_computed_step(rule):
    model, aux = make(rule)
    ref_model, ref_aux = copy.deepcopy(model), copy.deepcopy(aux)
    x, y = batch()
    # the hand step runs NCHW fp32 kernels: the trainer must use the same ones for a 1e-5 comparison (channels_last
    # sums in another order; tests/launch/test_parity.py covers it)
    trainer = SequentialTrainer(model, aux, OptimConfig(lr=LR), LRSchedule("constant", LR, 1, 0),
                                kernels=Kernels("contiguous"))
    result = trainer.train_step(x, y, epoch=0, step=0)
    ref_losses, ref_grads = hand_step(ref_model, ref_aux, x, y)

    got = [result.losses[k] for k in sorted(result.losses)]
    assert len(got) == len(aux) + 1
    torch.testing.assert_close(torch.stack(got), torch.stack(ref_losses), rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"primary parameter {name}")
    for a, b in zip(aux, ref_aux, strict=True):
        for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"aux parameter {name}")
    # every parameter really moved (a skipped module would leave its weights untouched)
    before = dict(make(rule)[0].named_parameters())
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)


def test_local_module_grads_stay_local():
    """Gradients of layer 0's local loss reach layer 0 and aux 0 only."""
    model, aux = make("auglocal")
    modules = build_local_modules(model, aux)
    x, y = batch()
    out = modules[0](x)
    modules[0].loss(out, y, x).backward()
    for i, layer in enumerate(model.layers):
        has = any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
        assert has == (i == 0), f"layer {i}"
    assert all(p.grad is None for a in aux[1:] for p in a.parameters())


def test_bp_and_auglocal_share_the_primary_definition():
    bp_model, bp_aux = make("bp")
    al_model, al_aux = make("auglocal")
    assert bp_aux == [] and len(al_aux) > 0
    assert type(bp_model) is type(al_model)
    assert bp_model.state_dict().keys() == al_model.state_dict().keys()
    for k, v in bp_model.state_dict().items():
        assert torch.equal(v, al_model.state_dict()[k]), k
    bp_modules = build_local_modules(bp_model, bp_aux)
    assert len(bp_modules) == 1 and bp_modules[0].layer_ids == list(range(bp_model.num_layers))


def test_split_stages_equal_one_stage_bitwise():
    """Two stages with their own optimizers compute exactly what one stage computes (the pipeline's basis)."""
    torch.set_num_threads(1)
    model_a, aux_a = make("auglocal")
    model_b, aux_b = copy.deepcopy(model_a), copy.deepcopy(aux_a)
    sched = LRSchedule("cifar", 0.1, 2, 1)
    one = Stage(build_local_modules(model_a, aux_a), OptimConfig(0.1), sched, seed=3)
    mods = build_local_modules(model_b, aux_b)
    two = [Stage(mods[:3], OptimConfig(0.1), sched, seed=3), Stage(mods[3:], OptimConfig(0.1), sched, seed=3)]
    for step in range(3):
        epoch = step // 2
        x, y = batch(seed=step)
        one.set_epoch(epoch)
        one.train_step(x, y, step=step)
        h = x
        for s in two:
            s.set_epoch(epoch)
            h = s.train_step(h, y, step=step).output
    for (name, p), (_, q) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert one.update_counts == {**two[0].update_counts, **two[1].update_counts}


def test_evaluate_uses_primary_network_in_eval_mode():
    model, _ = make("bp")
    x, y = batch(8)
    with torch.no_grad():
        expected = 100.0 * float((model.eval()(x).argmax(1) == y).float().mean())
    model.train()
    acc = evaluate(model, [(x, y)])
    assert acc == pytest.approx(expected)
    assert model.training            # evaluate restores training mode


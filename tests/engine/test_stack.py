"""Any stack of blocks as a LayeredModel: shapes, AugLocal copies (fresh, seeded), the builder, every rule, costs."""

from __future__ import annotations

import pytest
import torch
from auglocal.engine.auxnets import build_aux_nets
from auglocal.engine.auxnets.dgl import TokenDGLAux
from auglocal.engine.auxnets.predsim import TokenPredSimAux
from auglocal.engine.auxnets.selection import pyramid_ks, select_layers
from auglocal.engine.config import RunConfig, UsageError, build_network
from auglocal.engine.models import build_model
from auglocal.engine.models.stack import BlockStack, from_blocks, kind_letters, reinitialise
from auglocal.engine.planning.costs import head_cost, layer_costs
from auglocal.engine.planning.table import format_plan_table
from torch import nn

from tests.engine.stack_models import ConvBNReLU, ResBlock, cnn_blocks, downsampler, token_blocks

RULES = ("auglocal", "dgl", "predsim", "infopro")


def cnn(builder=downsampler, seed: int = 0) -> BlockStack:
    torch.manual_seed(seed)
    blocks, head = cnn_blocks()
    return from_blocks(blocks, head, num_classes=10, input_size=32, name="cnn", block_builder=builder)


def tokens(seed: int = 0) -> BlockStack:
    torch.manual_seed(seed)
    blocks, head = token_blocks()
    return from_blocks(blocks, head, num_classes=10, input_size=32, name="mixer")


def test_shapes_come_from_a_meta_forward_without_touching_the_rng():
    torch.manual_seed(3)
    blocks, head = cnn_blocks()
    state = torch.random.get_rng_state()
    model = from_blocks(blocks, head, num_classes=10, input_size=32, name="cnn")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.in_shapes[3] == (8, 32, 32) and model.out_shapes[3] == (16, 16, 16)
    assert [(i.width, i.spatial, i.kind, i.layout) for i in model.info] == [
        (8, 32, "C", "map"), (8, 32, "R", "map"), (8, 32, "R", "map"), (16, 16, "C", "map"),
        (16, 16, "R", "map"), (16, 16, "R", "map")]
    assert all(p.device.type == "cpu" for p in model.parameters())
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    mixer = tokens()
    assert [(i.width, i.spatial, i.layout) for i in mixer.info] == [(12, 16, "tokens")] * 4
    assert kind_letters([ConvBNReLU(3, 3), ResBlock(3), nn.Sequential(), ResBlock(3)]) == ["C", "R", "S", "R"]
    assert kind_letters([nn.ReLU(), nn.ReLU6(), nn.Sequential()]) == ["R", "E", "S"]


def test_bad_stacks_are_named():
    blocks, head = cnn_blocks()
    with pytest.raises(ValueError, match=r"cnn: the head emits \(10,\) per sample, expected \(7,\)"):
        from_blocks(blocks, head, num_classes=7, input_size=32, name="cnn")
    with pytest.raises(ValueError, match=r"cnn: block 1 \(ConvBNReLU\) cannot run on its input \(8, 32, 32\)"):
        from_blocks([blocks[0], ConvBNReLU(5, 5)], head, num_classes=10, input_size=32, name="cnn")
    with pytest.raises(ValueError, match="non-empty list"):
        from_blocks([], head, num_classes=10, input_size=32, name="cnn")


def test_auglocal_selection_and_depth_are_the_usual_ones():
    model = cnn()
    for d, tau in ((3, 0.5), (4, 0.0), (2, 0.5)):
        nets = build_aux_nets(model, "auglocal", d=d, tau=tau)
        n = model.num_layers - d
        ks = pyramid_ks(d - 1, n, tau)
        assert [aux.selected for aux in nets] == [select_layers(i, min(k, 5 - i), 6) for i, k in enumerate(ks)]


def test_copies_chain_or_ask_the_builder_and_are_marked():
    nets = build_aux_nets(cnn(), "auglocal", d=3, tau=0.5)
    # layer 0 copies [2, 5]: block 2 takes (8, 32, 32) as copied; block 5 wants (16, 16, 16): built
    assert [aux.selected for aux in nets] == [[2, 5], [3, 5], [4, 5]]
    assert [aux.notation for aux in nets] == ["8R-16R*-AP-10FC", "16C-16R-AP-10FC", "16R*-16R-AP-10FC"]
    assert isinstance(nets[0].body[0], ResBlock) and isinstance(nets[0].body[1], ConvBNReLU)
    assert nets[0].body[1][0].stride == (2, 2)
    assert isinstance(nets[1].body[0], ConvBNReLU) and nets[1].body[0][0].stride == (2, 2)   # layer 3 copied


def test_without_a_builder_the_error_names_layer_block_and_shapes():
    with pytest.raises(ValueError) as err:
        build_aux_nets(cnn(builder=None), "auglocal", d=3, tau=0.5)
    assert str(err.value) == ("cnn: the aux net of layer 0 cannot chain selected block 5: it would get (8, 32, 32), "
                              "but layer 5 takes (16, 16, 16); pass block_builder(j, input_shape, output_shape) to "
                              "from_blocks to build a block from (8, 32, 32) to (16, 16, 16)")
    with pytest.raises(ValueError, match=r"block_builder\(5, \(8, 32, 32\), \(16, 16, 16\)\)'s block emits "
                                         r"\(16, 32, 32\), not \(16, 16, 16\)"):
        build_aux_nets(cnn(builder=lambda j, i, o: ConvBNReLU(i[0], o[0])), "auglocal", d=3, tau=0.5)


def _weights(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_fresh_copies_differ_from_the_primary_and_repeat_across_seeded_builds():
    builds = []
    for _ in range(2):
        model = cnn(seed=5)
        builds.append((model, build_aux_nets(model, "auglocal", d=3, tau=0.5)))
    (model, nets), (_, again) = builds
    copied = nets[0].body[0]                      # a fresh ResBlock with layer 2's architecture
    for mine, primary in zip(_weights(copied), _weights(model.layers[2]), strict=True):
        assert mine.shape == primary.shape
        if mine.dim() > 1:                         # conv weights are random; BN's start at 1 / 0 in both
            assert not torch.equal(mine, primary)
    head_w = nets[0].head[-1].weight
    assert head_w.shape == model.head[-1].weight.shape and not torch.equal(head_w, model.head[-1].weight)
    for a, b in zip(nets, again, strict=True):
        for p, q in zip(_weights(a), _weights(b), strict=True):
            assert torch.equal(p, q)
    # BatchNorm of a copy starts fresh: running stats reset even after the primary's moved
    with torch.no_grad():
        model.layers[2].body[0][1].running_mean.fill_(3.0)
    fresh = build_aux_nets(model, "auglocal", d=3, tau=0.5)[0].body[0]
    assert torch.equal(fresh.body[0][1].running_mean, torch.zeros(8))


def test_reinitialise_uses_the_given_init_instead():
    block = ResBlock(4)
    reinitialise(block, lambda m: [nn.init.constant_(p, 0.5) for p in m.parameters()])
    assert all(bool((p == 0.5).all()) for p in block.parameters())


def _local_losses(model: BlockStack, nets) -> list[float]:
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    y = torch.arange(4) % 10
    h, losses = x, []
    for i, aux in enumerate(nets):
        h = model.layers[i](h.detach())
        assert aux.logits(h).shape == (4, 10)
        loss = aux(h, y, x if aux.needs_input else None)
        loss.backward()
        assert torch.isfinite(loss) and all(p.grad is not None for p in aux.parameters())
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_on_the_custom_cnn(rule):
    model = cnn()
    nets = build_aux_nets(model, rule, d=3, tau=0.5)
    assert len(nets) == (3 if rule == "auglocal" else 5)
    assert len(_local_losses(model, nets)) == len(nets)


def test_token_stacks_get_token_baselines_and_infopro_says_why_not():
    model = tokens()
    assert len(_local_losses(model, build_aux_nets(model, "auglocal", d=3))) == 1
    dgl = build_aux_nets(model, "dgl")
    assert all(isinstance(a, TokenDGLAux) for a in dgl) and dgl[0].notation == "12T-12T-12T-AP-12FC-12FC-10FC"
    predsim = build_aux_nets(model, "predsim")
    assert all(isinstance(a, TokenPredSimAux) for a in predsim)
    _local_losses(model, dgl)
    _local_losses(model, predsim)
    with pytest.raises(ValueError, match=r"rule 'infopro' has no aux net for layer 0 of mixer, which emits tokens "
                                         r"\(width 12, size 16\): InfoPro decodes the input image"):
        build_aux_nets(model, "infopro")


def test_conv_ablations_need_a_registered_cnn():
    with pytest.raises(ValueError, match="conv1x1 / conv3x3 ablations .* need a registered CNN"):
        build_aux_nets(cnn(), "auglocal", d=3, strategy="conv1x1")
    # the ablations that stop below the last block end on a shape the head copy does not take
    with pytest.raises(ValueError, match=r"layer 0 cannot chain the head: it would get \(8, 32, 32\), but the head "
                                         r"takes \(16, 16, 16\)"):
        build_aux_nets(cnn(), "auglocal", d=3, strategy="repetitive")
    nets = build_aux_nets(tokens(), "auglocal", d=2, strategy="sequential")
    assert [a.selected for a in nets] == [[1], [2]] and nets[0].notation == "12M-LN-10FC"


def test_a_spec_returning_blocks_and_head_is_stacked():
    model = build_model("tests.engine.stack_models:token_blocks", 10, 32)
    assert isinstance(model, BlockStack) and model.name == "token_blocks" and model.num_layers == 4
    cfg = RunConfig(model="tests.engine.stack_models:custom_cnn", rule="auglocal", d=3, num_classes=10,
                    input_size=32)
    model, nets = build_network(cfg)
    assert model.name == "custom_cnn" and len(nets) == 3
    with pytest.raises(UsageError, match="rule 'infopro' has no aux net for layer 0"):
        build_network(RunConfig(model="tests.engine.stack_models:token_blocks", rule="infopro", num_classes=10,
                                input_size=32))


@pytest.mark.parametrize("meta", [True, False])
def test_the_dry_run_table_counts_copies_like_their_blocks(meta):
    model = cnn()
    nets = build_aux_nets(model, "auglocal", d=3, tau=0.5)
    costs = layer_costs(model, nets, meta=meta)
    # layer 1's aux net = copy of layer 3 (stride 2, 8->16 at 32x32) + copy of layer 5 + head copy
    assert costs[1].aux_macs == costs[3].primary_macs + costs[5].primary_macs + head_cost(model, meta=meta).macs
    assert costs[1].aux_params == costs[3].primary_params + costs[5].primary_params + 16 * 10 + 10
    assert costs[3].primary_macs == 16 * 16 * 16 * 8 * 9          # out positions x out ch x in ch x 3x3
    table = format_plan_table(model, costs)
    assert "16C-16R-AP-10FC" in table and "cnn: 6 local layers at input 32x32, 3 with an aux net" in table


def test_a_stack_of_vectors_trains_with_auglocal_and_the_baselines_say_why_not():
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU())]
    blocks += [nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(3)]
    model = from_blocks(blocks, nn.Linear(16, 10), num_classes=10, input_size=8, name="mlp")
    assert [(i.width, i.spatial, i.layout) for i in model.info] == [(16, 1, "vector")] * 4
    nets = build_aux_nets(model, "auglocal", d=2)
    assert [a.notation for a in nets] == ["16S-10FC", "16S-10FC"]
    with pytest.raises(ValueError, match=r"rule 'dgl' has no aux net for layer 0 of mlp, which emits vector"):
        build_aux_nets(model, "dgl")

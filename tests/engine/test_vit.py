"""The ViT cut from torchvision's VisionTransformer: same forward, the registered sizes, and aux nets whose
selection, parameters and MACs match a count by hand."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from auglocal.engine.auxnets import build_aux_nets
from auglocal.engine.config import RunConfig, UsageError, build_network
from auglocal.engine.models import build_model
from auglocal.engine.models.vit import VIT_CONFIGS, ClassToken, PatchStem
from auglocal.engine.planning.costs import head_cost, layer_costs
from auglocal.engine.planning.table import format_plan_table
from torchvision.models import vision_transformer as tv_vit

S, P, D, MLP, HEADS, L, CLASSES = 32, 4, 64, 128, 4, 8, 10
N = (S // P) ** 2 + 1                      # 64 patches + the class token = 65 tokens

# --- by hand ----------------------------------------------------------------------------------------------------
LN_PARAMS = 2 * D                                           # weight + bias
ATTN_PARAMS = (3 * D * D + 3 * D) + (D * D + D)             # in_proj (q, k, v) + out_proj
MLP_PARAMS = (D * MLP + MLP) + (MLP * D + D)
BLOCK_PARAMS = 2 * LN_PARAMS + ATTN_PARAMS + MLP_PARAMS     # = 33,472
STEM_PARAMS = (3 * P * P * D + D) + D + N * D               # patchify conv + class token + position embedding
HEAD_PARAMS = LN_PARAMS + D * CLASSES + CLASSES             # final LayerNorm + classifier = 778
# MACs per image: linear maps on every token, plus the two attention products (Q K^T and A V: N x N x D each)
BLOCK_MACS = N * (3 * D * D + D * D + 2 * D * MLP) + 2 * N * N * D    # = 2,670,720
STEM_MACS = (S // P) ** 2 * D * (3 * P * P)                 # one 4x4x3 -> D projection per patch
HEAD_MACS = D * CLASSES                                     # LayerNorm is not a MAC; the class token is a slice


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("vit_tiny", CLASSES, S)


def test_the_cut_computes_visiontransformer_forward():
    torch.manual_seed(0)
    vit = tv_vit.VisionTransformer(image_size=S, patch_size=P, num_layers=L, num_heads=HEADS, hidden_dim=D,
                                   mlp_dim=MLP, num_classes=CLASSES)
    model = tiny(seed=0)
    # torchvision's own modules and initial weights, regrouped (nothing dropped, nothing added)
    assert sorted(float(p.detach().sum()) for p in vit.parameters()) == sorted(
        float(p.detach().sum()) for p in model.parameters())
    with torch.no_grad():
        for p in vit.heads.parameters():       # torchvision zeroes the classifier: make the comparison bite
            p.normal_()
        model.head[2].head.weight.copy_(vit.heads.head.weight)
        model.head[2].head.bias.copy_(vit.heads.head.bias)
    x = torch.randn(3, 3, S, S)
    vit.eval(), model.eval()
    torch.testing.assert_close(model(x), vit(x), rtol=0, atol=0)
    assert isinstance(model.layers[0][0], PatchStem) and isinstance(model.head[1], ClassToken)
    assert model.num_layers == L and [i.layout for i in model.info] == ["tokens"] * L
    assert [(i.width, i.spatial) for i in model.info] == [(D, N)] * L


def test_registered_sizes_are_torchvisions(monkeypatch):
    seen = {}

    def capture(**kwargs):
        seen.update(kwargs)
    monkeypatch.setattr(tv_vit, "_vision_transformer", capture)
    for name in ("vit_b_16", "vit_b_32", "vit_l_16"):
        seen.clear()
        getattr(tv_vit, name)(weights=None)
        config = dataclasses.asdict(VIT_CONFIGS[name])
        assert {k: seen[k] for k in config} == config, name
    assert dataclasses.asdict(VIT_CONFIGS["vit_tiny"]) == {
        "patch_size": 4, "num_layers": 8, "num_heads": 4, "hidden_dim": 64, "mlp_dim": 128}


def test_a_patch_that_does_not_divide_the_input_is_refused():
    with pytest.raises(ValueError, match="vit_tiny: patch size 4 must divide the input size, got 30"):
        build_model("vit_tiny", CLASSES, 30)
    with pytest.raises(ValueError, match="patch size 16 must divide"):
        build_network(RunConfig(model="vit_b_16", num_classes=10, input_size=28))
    with pytest.raises(UsageError, match="rule 'infopro' has no aux net for layer 0 of vit_tiny"):
        build_network(RunConfig(model="vit_tiny", rule="infopro", num_classes=10, input_size=32))


# d = 3, tau = 0.5 (the CIFAR default): k = 2, n = L - k - 1 = 5 aux nets. pyramid: k_i = round(2 (1 - r) + r),
# r = 0.5 i / 4 -> 2, 1.875, 1.75, 1.625, 1.5 -> all 2 (1.5 rounds to even). Selection round(i + (7 - i) / 2 * t):
#   i=0: 3.5 -> 4, 7;  i=1: 4, 7;  i=2: 4.5 -> 4, 7;  i=3: 5, 7;  i=4: 5.5 -> 6, 7
# d = 4, tau = 0.5: k = 3, n = 4. r = 0.5 i / 3: k_i = round(3 - 2r) = 3, 2.67 -> 3, 2.33 -> 2, 2.
#   i=0: 7/3 -> 2, 14/3 -> 5, 7;  i=1: 1+2, 1+4, 7;  i=2 (k=2): 4.5 -> 4, 7;  i=3: 5, 7
@pytest.mark.parametrize("d, selected", [
    (3, [[4, 7], [4, 7], [4, 7], [5, 7], [6, 7]]),
    (4, [[2, 5, 7], [3, 5, 7], [4, 7], [5, 7]]),
])
def test_aux_nets_match_the_hand_count(d, selected):
    model = tiny()
    nets = build_aux_nets(model, "auglocal", d=d, tau=0.5)
    assert [aux.selected for aux in nets] == selected
    assert nets[0].notation == "-".join(["64E"] * len(selected[0]) + ["LN-10FC"])
    for meta in (True, False):
        costs = layer_costs(model, nets, meta=meta)
        assert [c.primary_params for c in costs] == [STEM_PARAMS + BLOCK_PARAMS] + [BLOCK_PARAMS] * (L - 1)
        assert [c.primary_macs for c in costs] == [STEM_MACS + BLOCK_MACS] + [BLOCK_MACS] * (L - 1)
        assert [c.aux_params for c in costs[:len(nets)]] == [len(s) * BLOCK_PARAMS + HEAD_PARAMS for s in selected]
        assert [c.aux_macs for c in costs[:len(nets)]] == [len(s) * BLOCK_MACS + HEAD_MACS for s in selected]
        head = head_cost(model, meta=meta)
        assert (head.params, head.macs) == (HEAD_PARAMS, HEAD_MACS)
    table = format_plan_table(model, costs)
    assert "vit_tiny: 8 local layers at input 32x32" in table and f"{BLOCK_PARAMS:,}" in table


def test_copies_are_fresh_and_torchvision_initialised():
    model = tiny()
    aux = build_aux_nets(model, "auglocal", d=3, tau=0.5)[0]
    block, primary = aux.body[0], model.layers[4]
    assert type(block) is tv_vit.EncoderBlock
    assert not torch.equal(block.self_attention.in_proj_weight, primary.self_attention.in_proj_weight)
    assert not torch.equal(block.mlp[0].weight, primary.mlp[0].weight)
    assert float(block.mlp[0].bias.detach().abs().max()) < 1e-4          # N(0, 1e-6) as torchvision's MLPBlock
    assert not block.self_attention.in_proj_bias.any() and not block.self_attention.out_proj.bias.any()
    assert not model.head[2].head.weight.any() and aux.head[2].head.weight.all()   # zero classifier not inherited
    again = build_aux_nets(tiny(), "auglocal", d=3, tau=0.5)[0]
    for p, q in zip(aux.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


def test_every_rule_but_infopro_trains_on_tokens():
    model = tiny()
    x, y = torch.randn(2, 3, S, S), torch.tensor([1, 2])
    for rule in ("auglocal", "dgl", "predsim"):
        nets = build_aux_nets(model, rule, d=3)
        h = model.layers[0](x)
        loss = nets[0](h, y)
        loss.backward()
        assert torch.isfinite(loss) and model.layers[0][0].conv_proj.weight.grad is not None, rule
        model.zero_grad()
    repetitive = build_aux_nets(model, "auglocal", d=3, strategy="repetitive")[0]
    assert repetitive.notation == "64S*-64S*-LN-10FC"           # layer 0 takes the image: its encoder block, fresh
    assert all(type(b) is tv_vit.EncoderBlock for b in repetitive.body)

"""Aux nets of every rule on every registered model: shapes, finite local losses, gradient isolation, MACs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from auglocal.engine.auxnets import RULES, STRATEGIES, AuxNet, build_aux_nets, forward_macs
from auglocal.engine.auxnets.auglocal import plan_aux
from auglocal.engine.auxnets.infopro import CIFAR10_MEAN, CIFAR10_STD, InfoProAux, infopro_weights
from auglocal.engine.auxnets.predsim import grown_pool, similarity_matrix
from auglocal.engine.auxnets.registry import num_local_layers
from auglocal.engine.auxnets.selection import pyramid_ks
from auglocal.engine.models import LayeredModel, build_model, model_names
from torch import nn

BATCH = 2
CLASSES = 10
TAU = 0.5
SMALL_CIFAR = ("resnet20", "resnet32", "resnet56")
#: cases whose aux nets take many seconds to build and run (ResNet-101: 33 aux nets on 1024/2048-channel
#: layers); they run with -m slow, while the model's AugLocal and DGL cases stay in the default suite
HEAVY = {"resnet101": {"predsim", "infopro", "sequential", "repetitive", "conv1x1", "conv3x3"}}
#: the ImageNet-size ViTs (86M-304M parameters, aux nets of copied encoder blocks): every case with -m slow
BIG = ("vit_b_16", "vit_b_32", "vit_l_16")
#: what a stack of blocks (engine/models/stack.py: the ViTs) has no aux net for: InfoPro decodes an image from a
#: feature map, the conv ablations rebuild blocks wider; each must say so
STACK_REFUSES = {"infopro": "has no aux net for layer 0", "conv1x1": "need a registered CNN",
                 "conv3x3": "need a registered CNN"}


def d_values(name: str) -> tuple[int, ...]:
    if name in SMALL_CIFAR:
        return (2, 3, 4, 5, 6)
    if name in HEAVY or name in BIG:
        return (2,)
    return (2, 4)


def maybe_slow(name: str, case: str | int) -> pytest.param:
    marks = [pytest.mark.slow] if case in HEAVY.get(name, ()) or name in BIG else []
    return pytest.param(name, case, marks=marks, id=f"{name}-{case}")


@pytest.fixture(scope="module", autouse=True)
def _small_op_settings():
    """One thread and no oneDNN: these tiny batch-2 layers of ever-new shapes then run several times faster
    (oneDNN builds a kernel per new shape); the results do not depend on it."""
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = onednn
    torch.set_num_threads(threads)


def fresh(name: str) -> LayeredModel:
    torch.manual_seed(0)
    return build_model(name, CLASSES, 32).train()


def grads(module: nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters() if p.requires_grad]


def has_signal(module: nn.Module) -> bool:
    """Every parameter received a gradient and at least one of them is nonzero."""
    g = grads(module)
    return all(t is not None for t in g) and any(bool(t.any()) for t in g)


def untouched(module: nn.Module) -> bool:
    return all(t is None or not t.any() for t in grads(module))


def check_local_losses(model: LayeredModel, nets: list[AuxNet]) -> None:
    """Run the primary net layer by layer like the trainer (input detached) and check every aux net.

    Each local loss must be a finite scalar, its logits (batch, classes), and its backward must reach its own
    layer and aux net only: every other layer, aux net and the head keep no gradient (or an all-zero one).
    """
    torch.manual_seed(1)
    x = torch.randn(BATCH, 3, model.input_size, model.input_size)
    y = torch.arange(BATCH) % model.num_classes
    aux_nets = nn.ModuleList(nets)
    h = x
    for i, aux in enumerate(nets):
        assert aux.layer == i
        out = model.layers[i](h.detach())
        assert aux.logits(out).shape == (BATCH, model.num_classes)
        loss = aux(out, y, x if aux.needs_input else None)
        assert loss.dim() == 0 and torch.isfinite(loss), f"layer {i}: loss {loss}"
        loss.backward()
        for j, layer in enumerate(model.layers):
            assert has_signal(layer) if j == i else untouched(layer), f"loss {i} vs layer {j}"
        for j, other in enumerate(nets):
            assert has_signal(other) if j == i else untouched(other), f"loss {i} vs aux net {j}"
        assert untouched(model.head)
        model.zero_grad(set_to_none=True)
        aux_nets.zero_grad(set_to_none=True)
        h = out


# --- every model x every rule ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, d", [maybe_slow(n, d) for n in model_names() for d in d_values(n)])
def test_auglocal_on_every_model(name, d):
    model = fresh(name)
    nets = build_aux_nets(model, "auglocal", d=d, tau=TAU)
    n = num_local_layers(model.num_layers, d - 1, model.convention, "auglocal")
    assert len(nets) == n
    ks = pyramid_ks(d - 1, n, TAU)
    for aux in nets:
        assert len(aux.selected) == min(ks[aux.layer], model.num_layers - 1 - aux.layer)
        assert aux.selected[-1] == model.num_layers - 1
    check_local_losses(model, nets)


@pytest.mark.parametrize("name, rule", [maybe_slow(n, r) for n in model_names() for r in RULES if r != "auglocal"])
def test_baselines_on_every_model(name, rule):
    model = fresh(name)
    if model.family == "stack" and rule in STACK_REFUSES:
        with pytest.raises(ValueError, match=STACK_REFUSES[rule]):
            build_aux_nets(model, rule)
        return
    nets = build_aux_nets(model, rule)
    assert len(nets) == num_local_layers(model.num_layers, 1, model.convention, rule)
    assert all(aux.selected == [] for aux in nets)
    check_local_losses(model, nets)


@pytest.mark.parametrize("name, strategy", [maybe_slow(n, s) for n in model_names() for s in STRATEGIES[1:]])
def test_strategies_on_every_model(name, strategy):
    model = fresh(name)
    if model.family == "stack" and strategy in STACK_REFUSES:
        with pytest.raises(ValueError, match=STACK_REFUSES[strategy]):
            build_aux_nets(model, "auglocal", d=3, tau=TAU, strategy=strategy)
        return
    nets = build_aux_nets(model, "auglocal", d=3, tau=TAU, strategy=strategy)
    uniform = build_aux_nets(model, "auglocal", d=3, tau=TAU)
    assert len(nets) == len(uniform)
    for aux, ref in zip(nets, uniform, strict=True):
        depth = len(ref.selected)
        if strategy == "sequential":
            assert aux.selected == list(range(aux.layer + 1, aux.layer + depth + 1))
        elif strategy == "repetitive":
            assert aux.selected == [aux.layer] * depth
        else:
            check_conv_aux(model, aux, ref, kernel=1 if strategy == "conv1x1" else 3)
    check_local_losses(model, nets)


def check_conv_aux(model: LayeredModel, aux: AuxNet, ref: AuxNet, kernel: int) -> None:
    """A conv-strategy aux net: `depth` kxk convs, the uniform plan's downsampling, about its MACs."""
    convs = [m for m in aux.body.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(ref.selected) and aux.selected == ref.selected
    assert all(c.kernel_size == (kernel, kernel) for c in convs)
    halving = []
    for prev, m in zip([None, *aux.body], aux.body, strict=False):
        if isinstance(m, nn.Conv2d):
            halving.append(2 if m.stride[0] == 2 or isinstance(prev, nn.MaxPool2d) else 1)
    assert halving == [s.stride for s in plan_aux(model, aux.layer, ref.selected)]
    info = model.info[aux.layer]
    shape = (1, info.out_channels, info.spatial, info.spatial)
    target = forward_macs(ref, shape, "logits")
    assert forward_macs(aux, shape, "logits") == pytest.approx(target, rel=0.05), aux.notation


# --- strategy and convention details ---------------------------------------------------------------------------
def test_imagenet_convention_clamps_and_keeps_the_pyramid():
    model = fresh("resnet20")
    nets = build_aux_nets(model, "auglocal", d=5, tau=TAU, convention="imagenet")
    assert len(nets) == model.num_layers - 1
    ks = pyramid_ks(4, model.num_layers - 1, TAU)
    assert [len(a.selected) for a in nets] == [min(k, 9 - i) for i, k in enumerate(ks)]
    assert nets[-1].selected == [9]
    repetitive = build_aux_nets(model, "auglocal", d=5, convention="imagenet", strategy="repetitive")
    assert repetitive[-1].selected == [8] and repetitive[-2].selected == [7, 7]


def test_sequential_and_repetitive_on_resnet32():
    model = fresh("resnet32")
    seq = build_aux_nets(model, "auglocal", d=4, strategy="sequential")
    rep = build_aux_nets(model, "auglocal", d=4, strategy="repetitive")
    assert seq[5].selected == [6, 7, 8] and seq[5].notation == "32Rs2-32R-32R-AP-10FC"
    assert rep[5].selected == [5, 5, 5] and rep[5].notation == "16R-16R-16R-AP-10FC"


def test_vgg_aux_pools_once_per_width_change():
    model = fresh("vgg19")
    aux = build_aux_nets(model, "auglocal", d=4)[0]
    assert aux.selected == [5, 10, 15]
    assert aux.notation.startswith("M-256C-M-512C-512C-")
    assert sum(isinstance(m, nn.MaxPool2d) for m in aux.body.modules()) == 2


def test_mobile_strides_follow_spatial_size():
    model = fresh("mobilenetv2")
    for aux in build_aux_nets(model, "auglocal", d=3):
        out = aux.body(torch.zeros(BATCH, model.info[aux.layer].out_channels, *(2 * [model.info[aux.layer].spatial])))
        halvings = sum(s.stride == 2 for s in plan_aux(model, aux.layer, aux.selected))
        expected = model.info[aux.layer].spatial
        for _ in range(halvings):
            expected = (expected + 1) // 2
        assert out.shape[-1] == expected
        assert out.shape[-1] >= model.info[aux.selected[-1]].spatial


def test_auglocal_aux_nets_are_fresh_and_initialised_like_the_primary():
    model = fresh("resnet32")
    nets = build_aux_nets(model, "auglocal", d=3)
    primary = {id(p) for p in model.parameters()}
    assert all(id(p) not in primary for aux in nets for p in aux.parameters())
    conv = nets[0].body[0].conv1
    std = (2.0 / (9 * conv.out_channels)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(std, rel=0.15)


def total_macs(model: LayeredModel, nets: list[AuxNet]) -> float:
    """Forward MACs (G) of the primary net plus every aux net's classifier path, batch 1 (docs/method.md 3.8)."""
    total = forward_macs(model, (1, 3, model.input_size, model.input_size))
    for aux in nets:
        info = model.info[aux.layer]
        total += forward_macs(aux, (1, info.out_channels, info.spatial, info.spatial), "logits")
    return total / 1e9


@pytest.mark.parametrize("d, recount", [(2, 0.624), (3, 0.685), (4, 0.794), (5, 0.978), (6, 1.119)])
def test_resnet110_auglocal_macs_match_the_method_recount(d, recount):
    # docs/method.md 3.8: the independent recount under the cifar convention with tau = 0.5 (paper Table 7)
    model = fresh("resnet110")
    assert total_macs(model, build_aux_nets(model, "auglocal", d=d, tau=TAU)) == pytest.approx(recount, abs=6e-4)


def test_resnet110_dgl_macs_match_the_paper():
    model = fresh("resnet110")
    assert total_macs(model, build_aux_nets(model, "dgl")) == pytest.approx(0.26, abs=0.005)


# --- baselines -------------------------------------------------------------------------------------------------
def test_dgl_matches_the_paper_notation():
    nets = build_aux_nets(fresh("resnet32"), "dgl")
    assert nets[0].notation == "AP-16C1-16C1-16C1-AP-64FC-64FC-10FC"
    assert nets[-1].notation == "AP-64C1-64C1-64C1-AP-256FC-256FC-10FC"


@pytest.mark.parametrize("name, first, last", [
    ("resnet32", (5.0, 0.05), (0.2, 0.5)),
    ("resnet110", (5.0, 0.0), (0.5, 1.0)),
])
def test_infopro_weights_interpolate_over_aux_nets(name, first, last):
    nets = build_aux_nets(fresh(name), "infopro")
    got = [(a.recon_weight, a.ce_weight) for a in nets]
    assert got[0] == pytest.approx(first) and got[-1] == pytest.approx(last)
    mid = len(nets) // 2
    ratio = mid / (len(nets) - 1)
    assert got[mid] == pytest.approx(tuple(a * (1 - ratio) + b * ratio for a, b in zip(first, last, strict=True)))
    assert infopro_weights(16, 0, 1) == pytest.approx((5.0, 0.05))


def test_infopro_reconstructs_the_unnormalised_image():
    torch.manual_seed(0)
    aux = InfoProAux(0, 16, 64, CLASSES, CIFAR10_MEAN, CIFAR10_STD, recon_weight=1.0, ce_weight=0.0)
    image = torch.rand(BATCH, 3, 32, 32)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    h = torch.randn(BATCH, 16, 32, 32)
    loss = aux(h, torch.zeros(BATCH, dtype=torch.long), (image - mean) / std)
    recon = aux.reconstruct(h, (32, 32))
    assert loss.item() == pytest.approx(F.binary_cross_entropy(recon, image).item(), rel=1e-5)
    with pytest.raises(ValueError, match="aux\\(h, y, x\\)"):
        aux(h, torch.zeros(BATCH, dtype=torch.long))


def test_infopro_uses_given_normalisation():
    nets = build_aux_nets(fresh("resnet20"), "infopro", input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5))
    assert torch.equal(nets[0].mean.flatten(), torch.full((3,), 0.5))
    assert "mean" not in nets[0].state_dict()


def test_similarity_matrix_of_labels():
    y = torch.tensor([0, 1, 0, 2])
    s = similarity_matrix(F.one_hot(y, CLASSES).float())
    assert torch.allclose(s.diagonal(), torch.ones(4))
    assert torch.allclose(s, s.t())
    assert s[0, 2] == pytest.approx(1.0) and s[0, 1] < 0


@pytest.mark.parametrize("channels, spatial", [(16, 32), (32, 16), (64, 8), (512, 2), (40, 7)])
def test_predsim_pool_shrinks_below_512(channels, spatial):
    pool, dim = grown_pool(channels, spatial, 512)
    out = pool(torch.zeros(1, channels, spatial, spatial))
    assert out.flatten(1).shape[1] == dim
    assert dim <= 512 or out.shape[-2:] == (1, 1)


# --- argument checks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"rule": "sgd"}, "choose one of: bp, auglocal"),
    ({"rule": "auglocal", "strategy": "random"}, "choose one of: uniform, sequential"),
    ({"rule": "dgl", "strategy": "sequential"}, "use it with rule 'auglocal'"),
    ({"rule": "auglocal", "d": 1}, "integer >= 2"),
    ({"rule": "auglocal", "d": 16}, "use d in 2..15"),
    ({"rule": "auglocal", "tau": 1.5}, "in \\[0, 1\\]"),
    ({"rule": "auglocal", "tau": -0.5}, "in \\[0, 1\\]"),
    ({"rule": "auglocal", "convention": "tpu"}, "choose one of: cifar, imagenet"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_aux_nets(fresh("resnet32"), **kwargs)


def test_largest_d_and_bp():
    model = fresh("resnet32")
    assert len(build_aux_nets(model, "auglocal", d=15)) == 1
    assert len(build_aux_nets(model, "auglocal", d=16, convention="imagenet")) == 15
    assert build_aux_nets(model, "bp") == []


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in BIG else []) for n in model_names()])
def test_every_model_every_d_shapes_on_meta(name):
    """Every model x d in 2..6: each aux net takes its layer's output and ends in (batch, classes) logits.

    Shapes only, on the meta device (no memory, no arithmetic), so the whole grid stays cheap; the real
    forward/backward of each model is covered by the tests above."""
    model = build_model(name, num_classes=CLASSES).to("meta")   # torchvision's RegNet cannot be built on meta
    for d in range(2, 7):
        with torch.device("meta"):
            aux = build_aux_nets(model, "auglocal", d=d, tau=TAU)
            h = torch.empty(BATCH, 3, 32, 32)
            assert len(aux) > 0
            for i, layer in enumerate(model.layers):
                h = layer(h)
                if i < len(aux):
                    assert aux[i].logits(h).shape == (BATCH, CLASSES), f"{name} d={d} layer {i}"
            assert model.head(h).shape == (BATCH, CLASSES)

"""Primary networks: layer counts, per-layer shapes, aux-block hooks, init, save/load, torchvision parity."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from auglocal.engine.models import LayeredModel, build_model, model_names
from auglocal.engine.models.torchvision_cuts import (
    TorchvisionCut,
    build_torchvision_model,
    from_torchvision_state_dict,
    to_torchvision_state_dict,
)
from torch import nn
from torchvision.models import efficientnet, mobilenetv2, regnet, resnet
from torchvision.ops import Conv2dNormActivation

NUM_LAYERS = {
    "resnet20": 10, "resnet32": 16, "resnet56": 28, "resnet110": 55, "vgg19": 16, "vgg13": 10,
    "resnet34": 17, "resnet101": 34, "mobilenetv2": 19, "efficientnet_b0": 17, "regnetx_400mf": 23,
}
NEW_MODELS = ["vgg19", "vgg13", "resnet34", "resnet101", "mobilenetv2", "efficientnet_b0", "regnetx_400mf"]
TORCHVISION_MODELS = ["vgg13", "resnet34", "resnet101", "mobilenetv2", "efficientnet_b0", "regnetx_400mf"]
CLASSES = 7


def cached(name: str, size: int = 32) -> LayeredModel:
    """A shared eval-mode model per (name, size) for the read-only tests.

    VGG13 (0.5 GB, nearly all of it the 25088x4096 classifier) is rebuilt each time instead of kept, to keep
    the test process small; it takes about a second.
    """
    if name == "vgg13":
        return _build_eval(name, size)
    return _cached_build(name, size)


def _build_eval(name: str, size: int) -> LayeredModel:
    torch.manual_seed(0)
    return build_model(name, CLASSES, size).eval()


_cached_build = functools.cache(_build_eval)


@pytest.fixture(scope="module", autouse=True)
def _free_cached_models():
    """The cached models are dropped once this module's tests are done."""
    yield
    _cached_build.cache_clear()


def strides(model: LayeredModel) -> list[int]:
    """The stride each layer applies to its input (the stem's from the image size)."""
    sizes = [model.input_size] + [i.spatial for i in model.info]
    return [round(a / b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]


def distinct_layers(model: LayeredModel) -> list[int]:
    """One layer index per distinct (type, size, in/out channels, stride) so deep stages are not re-tested."""
    seen, keep = set(), []
    for j, layer in enumerate(model.layers):
        in_channels = model.info[j - 1].out_channels if j else 3
        key = (type(layer), sum(p.numel() for p in layer.parameters()), in_channels, model.info[j].out_channels,
               strides(model)[j])
        if key not in seen:
            seen.add(key)
            keep.append(j)
    return keep


def perturb(model: nn.Module) -> None:
    """Move weights and BN statistics away from their init so that a wrong mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.empty_like(p).normal_(0.0, 0.05, generator=g))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(1 + torch.rand(m.running_var.shape, generator=g))


# --- structure ----------------------------------------------------------------------------------------------
def test_every_model_is_registered():
    assert set(NUM_LAYERS) <= set(model_names())


@pytest.mark.parametrize("name", sorted(NUM_LAYERS))
def test_number_of_local_layers(name):
    model = cached(name)
    assert model.num_layers == NUM_LAYERS[name] == len(model.info)
    assert [i.index for i in model.info] == list(range(model.num_layers))


@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("name", sorted(NUM_LAYERS))
def test_layer_outputs_match_info_and_logits_shape(name, size):
    model = cached(name, size)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        h = x
        for layer, info in zip(model.layers, model.info, strict=True):
            h = layer(h)
            assert tuple(h.shape) == (2, info.out_channels, info.spatial, info.spatial), (name, info)
        logits = model.head(h)
        assert tuple(logits.shape) == (2, CLASSES)
        torch.testing.assert_close(model(x), logits, rtol=0, atol=0)


@pytest.mark.parametrize("depth,stage_blocks", [(32, 5), (110, 18)])
def test_cifar_resnet_channels_and_spatial(depth, stage_blocks):
    model = cached(f"resnet{depth}")
    n = stage_blocks
    assert model.widths == [16] * (n + 1) + [32] * n + [64] * n
    assert [i.spatial for i in model.info] == [32] * (n + 1) + [16] * n + [8] * n


def test_vgg19_channels_and_spatial_on_cifar_and_stl_sizes():
    assert cached("vgg19").widths == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    assert [i.spatial for i in cached("vgg19").info] == [32, 32, 16, 16] + [8] * 4 + [4] * 4 + [2] * 4
    assert [i.spatial for i in cached("vgg19", 96).info] == [96, 96, 48, 48] + [24] * 4 + [12] * 4 + [6] * 4
    assert {m.family for m in (cached("vgg19"),)} == {"vgg"}


def test_vgg13_cut_on_imagenet_size():
    model = build_model("vgg13", 1000, 224)
    assert model.widths == [64] * 2 + [128] * 2 + [256] * 2 + [512] * 4
    assert [i.spatial for i in model.info] == [224, 224, 112, 112, 56, 56, 28, 28, 14, 14]
    # each max-pool leads the conv after it; the fifth one opens the head
    pooled = [isinstance(layer[0], nn.MaxPool2d) for layer in model.layers]
    assert pooled == [False, False, True, False, True, False, True, False, True, False]
    assert isinstance(model.head[0], nn.MaxPool2d)
    assert (model.family, model.convention, model.aux_downsample) == ("vgg", "imagenet", "maxpool")


@pytest.mark.parametrize("name,blocks,expansion",
                         [("resnet34", [3, 4, 6, 3], 1), ("resnet101", [3, 4, 23, 3], 4)])
def test_imagenet_resnet_widths_in_planes(name, blocks, expansion):
    model = build_model(name, 1000, 224)
    planes = [64] + [w for w, n in zip([64, 128, 256, 512], blocks, strict=True) for _ in range(n)]
    assert model.widths == planes
    assert [i.out_channels for i in model.info] == [64] + [p * expansion for p in planes[1:]]
    assert [i.spatial for i in model.info] == [56] * (1 + blocks[0]) + [28] * blocks[1] + [14] * blocks[2] + [
        7] * blocks[3]
    assert (model.family, model.convention, model.aux_downsample) == ("imagenet_resnet", "imagenet", "stride")


def test_mobile_cuts_follow_the_papers_stage_tables():
    mnv2 = build_model("mobilenetv2", 1000, 224)
    assert mnv2.widths == [32, 16, 24, 24] + [32] * 3 + [64] * 4 + [96] * 3 + [160] * 3 + [320, 1280]
    assert [i.spatial for i in mnv2.info] == [112, 112, 56, 56] + [28] * 3 + [14] * 7 + [7] * 5
    effnet = build_model("efficientnet_b0", 1000, 224)
    assert effnet.widths == [32, 16, 24, 24, 40, 40] + [80] * 3 + [112] * 3 + [192] * 4 + [320]
    assert [i.spatial for i in effnet.info] == [112, 112, 56, 56, 28, 28] + [14] * 6 + [7] * 5
    regnet_x = build_model("regnetx_400mf", 1000, 224)
    assert regnet_x.widths == [32, 32, 64, 64] + [160] * 7 + [400] * 12
    assert [i.spatial for i in regnet_x.info] == [112, 56, 28, 28] + [14] * 7 + [7] * 12
    for model in (mnv2, effnet, regnet_x):
        assert (model.family, model.aux_downsample) == ("mobile", "stride")


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        build_model("vgg19", 10, 8)


# --- aux-net hooks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(NUM_LAYERS))
def test_aux_blocks_take_any_input_channels_and_halve_with_stride_2(name):
    model = cached(name)
    for j in distinct_layers(model):
        for in_channels, stride in ((24, 2), (24, 1), (model.info[j - 1].out_channels if j else 3, 1)):
            block = model.aux_block(j, in_channels, stride).eval()
            with torch.no_grad():
                out = block(torch.randn(2, in_channels, 8, 8))
            size = 8 // stride
            assert tuple(out.shape) == (2, model.aux_block_out_channels(j), size, size), (j, stride)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_aux_block_rebuilds_the_layers_own_architecture(name):
    """With the layer's own input channels and stride, an aux block is a fresh twin of the primary layer."""
    model = cached(name)
    first = 1 if model.family == "imagenet_resnet" else 0  # the ResNet stem is not a block
    for j in distinct_layers(model)[first:]:
        layer = model.layers[j]
        in_channels = model.info[j - 1].out_channels if j else 3
        block = model.aux_block(j, in_channels, strides(model)[j]).eval()
        # conv stems come back as a plain Conv2dNormActivation (RegNet's SimpleStemIN is one with stride 2)
        assert isinstance(block, Conv2dNormActivation if isinstance(layer, Conv2dNormActivation) else type(layer))
        assert not {id(p) for p in block.parameters()} & {id(p) for p in layer.parameters()}
        block.load_state_dict(layer.state_dict(), strict=True)
        x = torch.randn(2, in_channels, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(block(x), layer(x), rtol=0, atol=0)


def test_aux_block_types_are_torchvisions():
    assert isinstance(cached("resnet34").aux_block(5, 64, 2), resnet.BasicBlock)
    assert isinstance(cached("resnet101").aux_block(5, 64, 2), resnet.Bottleneck)
    assert cached("resnet101").aux_block_out_channels(0) == 256  # the stem's "planes" 64 as a Bottleneck
    assert isinstance(cached("mobilenetv2").aux_block(3, 40, 2), mobilenetv2.InvertedResidual)
    assert isinstance(cached("mobilenetv2").aux_block(18, 40, 1), Conv2dNormActivation)
    assert isinstance(cached("efficientnet_b0").aux_block(3, 40, 2), efficientnet.MBConv)
    assert isinstance(cached("regnetx_400mf").aux_block(3, 40, 2), regnet.ResBottleneckBlock)


def test_resnet_aux_block_projection_only_when_shape_changes():
    model = cached("resnet34")
    assert model.aux_block(16, 512, 1).downsample is None
    assert model.aux_block(16, 256, 1).downsample is not None
    assert model.aux_block(16, 512, 2).downsample[0].stride == (2, 2)


@pytest.mark.parametrize("name", ["resnet34", "resnet101", "mobilenetv2", "efficientnet_b0", "regnetx_400mf"])
def test_pool_linear_aux_head(name):
    model = cached(name)
    channels = model.aux_block_out_channels(model.num_layers - 1)
    head = model.aux_head(channels, 3).eval()
    x = torch.randn(2, channels, 3, 3)
    assert tuple(head(x).shape) == (2, CLASSES)
    linear = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(linear) == 1 and linear[0].in_features == channels


@pytest.mark.parametrize("name", ["vgg13", "vgg19"])
def test_vgg_aux_classifier_is_gap_then_512_mlp(name):
    head = cached(name).aux_head(512, 2).eval()
    x = torch.randn(2, 512, 4, 4)
    # flatten + adaptive 1-D pool to 512 over a 512-channel map is per-channel global average pooling
    torch.testing.assert_close(head[:2](x), x.mean(dim=(2, 3)))
    assert [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)] == [
        (512, 512), (512, 512), (512, CLASSES)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head) == 2
    assert tuple(head(torch.randn(2, 512, 7, 7)).shape) == (2, CLASSES)


@pytest.mark.parametrize("name", ["vgg13", "vgg19"])
def test_vgg_aux_block_pools_instead_of_striding(name):
    model = cached(name)
    block = model.aux_block(4, 128, 2)
    assert isinstance(block[0], nn.MaxPool2d)
    assert all(c.stride == (1, 1) and c.bias is not None for c in block.modules() if isinstance(c, nn.Conv2d))
    assert not isinstance(model.aux_block(4, 256, 1)[0], nn.MaxPool2d)


# --- init ---------------------------------------------------------------------------------------------------
def fan_out_std(conv: nn.Conv2d) -> float:
    return math.sqrt(2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))


def assert_fan_out_init(module: nn.Module) -> None:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() > 20000]
    assert convs
    for conv in convs:
        assert conv.weight.std().item() == pytest.approx(fan_out_std(conv), rel=0.1)
        assert conv.bias is None or not conv.bias.any()
    for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bool((bn.weight == 1).all()) and not bn.bias.any()


@pytest.mark.parametrize("name", ["vgg13", "vgg19"])
def test_vgg_primary_init(name):
    model = cached(name)
    assert_fan_out_init(model)
    for linear in (m for m in model.modules() if isinstance(m, nn.Linear)):
        assert not linear.bias.any()
        if linear.weight.numel() > 10000:
            assert linear.weight.std().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("name", ["resnet34", "resnet101"])
def test_imagenet_resnet_primary_init_has_no_zero_init_residual(name):
    assert_fan_out_init(cached(name))


@pytest.mark.parametrize("name", ["resnet101", "mobilenetv2", "efficientnet_b0", "regnetx_400mf"])
def test_init_aux_is_kaiming_fan_out(name):
    model = cached(name)
    aux = nn.Sequential(model.aux_block(model.num_layers - 1, 96, 2), model.aux_head(96, 1))
    model.init_aux(aux)
    assert_fan_out_init(aux)


@pytest.mark.parametrize("name", ["vgg13", "vgg19"])
def test_vgg_init_aux_keeps_pytorch_default(name):
    model = cached(name)
    aux = nn.Sequential(model.aux_block(9, 512, 1), model.aux_head(512, 1))
    before = {k: v.clone() for k, v in aux.state_dict().items()}
    model.init_aux(aux)
    for key, value in aux.state_dict().items():
        assert torch.equal(value, before[key]), key


# --- saving and torchvision weights -------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW_MODELS)
def test_state_dict_loads_into_bare_model_of_same_name(name):
    torch.manual_seed(2)
    trained = build_model(name, CLASSES, 32)
    perturb(trained)
    bare = build_model(name, CLASSES, 32)
    bare.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bare.eval()(x), trained.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_exported_weights_give_torchvisions_outputs(name):
    torch.manual_seed(3)
    model = build_model(name, CLASSES, 32)
    assert isinstance(model, TorchvisionCut)
    perturb(model)
    reference = build_torchvision_model(model)
    reference.load_state_dict(to_torchvision_state_dict(model), strict=True)
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_imported_torchvision_weights_give_torchvisions_outputs(name):
    torch.manual_seed(4)
    model = build_model(name, CLASSES, 32)
    reference = build_torchvision_model(model)
    perturb(reference)
    from_torchvision_state_dict(model, reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=0)


def test_weight_conversion_errors_are_clear():
    model = cached("resnet34")
    state = build_torchvision_model(model).state_dict()
    state.pop("fc.bias")
    with pytest.raises(ValueError, match="missing"):
        from_torchvision_state_dict(model, state)
    with pytest.raises(ValueError, match="not cut from a torchvision model"):
        to_torchvision_state_dict(cached("resnet32"))

"""torchvision's ImageNet ResNets and mobile networks cut into local layers, with weight-key conversion."""

from __future__ import annotations

import copy
from functools import partial
from itertools import chain

import torch
import torchvision
from auglocal.engine.models.base import LayeredModel, LayerInfo
from auglocal.engine.models.cifar_resnet import PoolLinearHead
from torch import nn
from torch.func import functional_call
from torchvision.models import efficientnet, mobilenetv2, regnet, resnet
from torchvision.ops import Conv2dNormActivation


# --- helpers shared by every cut ----------------------------------------------------------------------------
def trace_shapes(layers: list[nn.Module], input_size: int, name: str) -> list[tuple[int, int]]:
    """(channels, spatial) emitted by each layer for a square `input_size` RGB input.

    Runs the layers in eval mode on the meta device (parameters swapped for meta stand-ins), so the sizes are
    the true ones of the real modules but nothing is computed and the real weights are left untouched.
    """
    x = torch.empty(2, 3, input_size, input_size, device="meta")
    shapes = []
    for j, layer in enumerate(layers):
        stand_ins = {key: torch.empty_like(t, device="meta")
                     for key, t in chain(layer.named_parameters(), layer.named_buffers())}
        modes = [(m, m.training) for m in layer.modules()]
        layer.eval()
        try:
            x = functional_call(layer, stand_ins, (x,))
        except RuntimeError as err:
            raise ValueError(f"{name}: input size {input_size} is too small, layer {j} cannot run on a "
                             f"{tuple(x.shape[1:])} input ({err}); use a larger input_size") from err
        finally:
            for module, training in modes:
                module.training = training
        shapes.append((x.shape[1], x.shape[2]))
    return shapes


def make_infos(shapes: list[tuple[int, int]], widths: list[int], kinds: list[str]) -> list[LayerInfo]:
    """LayerInfo list from traced (channels, spatial) pairs, each layer's width and aux-notation letter."""
    rows = zip(shapes, widths, kinds, strict=True)
    return [LayerInfo(j, w, c, s, k) for j, ((c, s), w, k) in enumerate(rows)]


def torchvision_style_init(module: nn.Module) -> None:
    """Convs kaiming-normal fan_out (ReLU gain), conv bias 0, BN 1/0; Linear keeps torch's default.

    This is the init torchvision gives every conv of these networks (docs/method.md 1.3), applied to aux nets so
    they start like the primary network's blocks.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_stride(stride: int) -> None:
    """Aux builders only ever ask for stride 1 or 2 (docs/method.md 3.4); anything else is a caller bug."""
    if stride not in (1, 2):
        raise ValueError(f"aux block stride must be 1 or 2 (at most one halving per block), got {stride}")


def _norm_like(module: nn.Module) -> partial:
    """A BatchNorm2d factory with the eps/momentum of the first BN in `module` (torchvision varies them)."""
    bn = next(m for m in module.modules() if isinstance(m, nn.BatchNorm2d))
    return partial(nn.BatchNorm2d, eps=bn.eps, momentum=bn.momentum)


def _fresh_conv_norm_act(layer: Conv2dNormActivation, in_channels: int, stride: int) -> Conv2dNormActivation:
    """A new conv-BN-activation like `layer` (stem or final 1x1 conv) with other in-channels and stride."""
    conv = layer[0]
    activation = type(layer[2]) if len(layer) > 2 else None
    return Conv2dNormActivation(in_channels, conv.out_channels, kernel_size=conv.kernel_size[0],
                                stride=stride, norm_layer=_norm_like(layer), activation_layer=activation)


# --- base class with the key mapping ------------------------------------------------------------------------
class TorchvisionCut(LayeredModel):
    """A LayeredModel whose layers and head *are* the modules of a torchvision model, regrouped.

    Because the modules are reused (not rebuilt), every weight-holding module has a known torchvision name;
    `torchvision_keys` records it (our module path -> torchvision module path), which is all the weight
    conversion needs. The torchvision model itself is not kept.
    """

    #: torchvision.models builder name, e.g. 'resnet34'
    torchvision_arch: str = ""

    def __init__(self, source: nn.Module, arch: str, layers: list[nn.Module], head: nn.Module,
                 info: list[LayerInfo], num_classes: int, input_size: int, name: str):
        super().__init__(layers, head, info, num_classes, input_size, name)
        self.torchvision_arch = arch
        source_names = {id(m): n for n, m in source.named_modules()}
        self.torchvision_keys: dict[str, str] = {}
        for path, module in self.named_modules():
            own = chain(module.parameters(recurse=False), module.buffers(recurse=False))
            if next(own, None) is None:
                continue
            if id(module) not in source_names:
                raise RuntimeError(f"{name}: module {path} holds weights but is not part of torchvision's "
                                   f"{arch}; the cut must reuse torchvision's modules")
            self.torchvision_keys[path] = source_names[id(module)]


def build_torchvision_model(model: TorchvisionCut) -> nn.Module:
    """A fresh torchvision model of the architecture `model` was cut from (same number of classes)."""
    _require_cut(model)
    return getattr(torchvision.models, model.torchvision_arch)(weights=None, num_classes=model.num_classes)


def to_torchvision_state_dict(model: TorchvisionCut) -> dict[str, torch.Tensor]:
    """`model`'s weights under torchvision's key names; they load strictly into `build_torchvision_model`."""
    _require_cut(model)
    out = {}
    for key, value in model.state_dict().items():
        path, leaf = key.rsplit(".", 1)
        out[f"{model.torchvision_keys[path]}.{leaf}"] = value
    return out


def from_torchvision_state_dict(model: TorchvisionCut, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a torchvision state dict (e.g. of `build_torchvision_model(model)`) into the layered `model`."""
    _require_cut(model)
    ours = {tv: path for path, tv in model.torchvision_keys.items()}
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        path, leaf = key.rsplit(".", 1)
        if path in ours:
            renamed[f"{ours[path]}.{leaf}"] = value
        else:
            unknown.append(key)
    missing = sorted(set(model.state_dict()) - set(renamed))
    if unknown or missing:
        raise ValueError(f"state dict does not match torchvision's {model.torchvision_arch} with "
                         f"{model.num_classes} classes: unknown keys {unknown[:5]}, missing {missing[:5]}; "
                         f"pass the state_dict of torchvision.models.{model.torchvision_arch}(num_classes="
                         f"{model.num_classes})")
    model.load_state_dict(renamed, strict=True)


def _require_cut(model: nn.Module) -> None:
    if not isinstance(model, TorchvisionCut):
        raise ValueError(f"{type(model).__name__} was not cut from a torchvision model; weight conversion "
                         "needs one of the torchvision-derived models (vgg13, resnet34, resnet101, "
                         "mobilenetv2, efficientnet_b0, regnetx_400mf)")


# --- ImageNet ResNets ---------------------------------------------------------------------------------------
class ImageNetResNet(TorchvisionCut):
    """torchvision ResNet-34 / -101: layer 0 = stem (conv1, bn1, relu, maxpool), then one layer per block.

    L = 1 + 16 = 17 (BasicBlocks) or 1 + 33 = 34 (Bottlenecks), docs/method.md 1.3. `width` is in "planes" (the
    paper's net_dim; stem 64), `out_channels` = planes x expansion (stem: 64). Head = GAP -> fc.
    """

    family = "imagenet_resnet"
    convention = "imagenet"
    aux_downsample = "stride"

    def __init__(self, arch: str, num_classes: int = 1000, input_size: int = 224):
        tv = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        blocks = [block for stage in (tv.layer1, tv.layer2, tv.layer3, tv.layer4) for block in stage]
        block_type = type(blocks[0])
        layers = [nn.Sequential(tv.conv1, tv.bn1, tv.relu, tv.maxpool), *blocks]
        shapes = trace_shapes(layers, input_size, arch)
        widths = [shapes[0][0]] + [c // block_type.expansion for c, _ in shapes[1:]]
        kind = "B" if block_type is resnet.Bottleneck else "R"
        info = make_infos(shapes, widths, [kind] * len(layers))
        super().__init__(tv, arch, layers, nn.Sequential(tv.avgpool, nn.Flatten(), tv.fc), info, num_classes,
                         input_size, arch)
        self.block_type = block_type

    def aux_block(self, j: int, in_channels: int, stride: int) -> nn.Module:
        """A fresh block of the network's type (also for j = 0, the stem, which selection never picks)."""
        check_stride(stride)
        planes = self.info[j].width
        out = planes * self.block_type.expansion
        downsample = None
        if stride != 1 or in_channels != out:
            downsample = nn.Sequential(resnet.conv1x1(in_channels, out, stride), nn.BatchNorm2d(out))
        return self.block_type(in_channels, planes, stride, downsample)

    def aux_block_out_channels(self, j: int) -> int:
        return self.info[j].width * self.block_type.expansion

    def aux_head(self, in_channels: int, k: int) -> nn.Module:
        return PoolLinearHead(in_channels, self.num_classes)

    def init_aux(self, module: nn.Module) -> None:
        torchvision_style_init(module)


class MobileCut(TorchvisionCut):
    """Shared hooks of the mobile networks (docs/method.md 1.4): width = out_channels, GAP -> Linear aux head.

    Convention 'cifar': the paper reports these networks on CIFAR-10 with "other settings as CIFAR". Aux
    nets get torchvision's conv init (kaiming fan_out, BN 1/0), as the CIFAR code inits aux convs like the
    primary's.
    """

    family = "mobile"
    convention = "cifar"
    aux_downsample = "stride"

    def aux_head(self, in_channels: int, k: int) -> nn.Module:
        return PoolLinearHead(in_channels, self.num_classes)

    def init_aux(self, module: nn.Module) -> None:
        torchvision_style_init(module)


class MobileNetV2Cut(MobileCut):
    """torchvision MobileNetV2 cut as features[0..18]: stem, 17 InvertedResiduals, final 1x1 conv -> L = 19.

    Head = GAP -> flatten -> classifier (Dropout, Linear), exactly torchvision's forward after `features`.
    """

    def __init__(self, num_classes: int = 1000, input_size: int = 224):
        tv = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
        layers = list(tv.features)
        shapes = trace_shapes(layers, input_size, "mobilenetv2")
        kinds = ["M" if isinstance(m, mobilenetv2.InvertedResidual) else "C" for m in layers]
        info = make_infos(shapes, [c for c, _ in shapes], kinds)
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), tv.classifier)
        super().__init__(tv, "mobilenet_v2", layers, head, info, num_classes, input_size, "mobilenetv2")

    def aux_block(self, j: int, in_channels: int, stride: int) -> nn.Module:
        check_stride(stride)
        layer = self.layers[j]
        if not isinstance(layer, mobilenetv2.InvertedResidual):
            return _fresh_conv_norm_act(layer, in_channels, stride)
        depthwise = layer.conv[-3][0]  # hidden = round(in * t); the first conv sees the block's input
        expand_ratio = round(depthwise.in_channels / layer.conv[0][0].in_channels)
        return mobilenetv2.InvertedResidual(in_channels, layer.out_channels, stride, expand_ratio,
                                            norm_layer=_norm_like(layer))


def _efficientnet_b0_block_configs() -> list[efficientnet.MBConvConfig]:
    """One MBConvConfig per block, expanded from torchvision's stage table the way EfficientNet does it."""
    stages, _ = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=1.0, depth_mult=1.0)
    configs = []
    for stage in stages:
        for i in range(stage.num_layers):
            config = copy.copy(stage)
            if i > 0:
                config.input_channels, config.stride = config.out_channels, 1
            configs.append(config)
    return configs


class EfficientNetB0Cut(MobileCut):
    """torchvision EfficientNet-B0 cut as stem conv + 16 MBConv blocks -> L = 17.

    The final 1x1 conv (320 -> 1280) lives in the head: head = conv1x1-BN-SiLU -> GAP -> flatten ->
    classifier.
    Aux blocks are MBConv built from the layer's own torchvision config (expand ratio, kernel) with the
    in-channels and stride replaced, and the layer's stochastic-depth probability.
    """

    def __init__(self, num_classes: int = 1000, input_size: int = 224):
        tv = torchvision.models.efficientnet_b0(weights=None, num_classes=num_classes)
        layers = [tv.features[0]] + [block for stage in tv.features[1:-1] for block in stage]
        shapes = trace_shapes(layers, input_size, "efficientnet_b0")
        configs = _efficientnet_b0_block_configs()
        if [c.out_channels for c in configs] != [c for c, _ in shapes[1:]]:
            raise RuntimeError("torchvision's efficientnet_b0 no longer matches its block table")
        kinds = ["C"] + ["M"] * len(configs)
        info = make_infos(shapes, [c for c, _ in shapes], kinds)
        head = nn.Sequential(tv.features[-1], tv.avgpool, nn.Flatten(), tv.classifier)
        super().__init__(tv, "efficientnet_b0", layers, head, info, num_classes, input_size,
                         "efficientnet_b0")
        self.block_configs = [None, *configs]

    def aux_block(self, j: int, in_channels: int, stride: int) -> nn.Module:
        check_stride(stride)
        layer = self.layers[j]
        if j == 0:
            return _fresh_conv_norm_act(layer, in_channels, stride)
        config = copy.copy(self.block_configs[j])
        config.input_channels, config.stride = in_channels, stride
        return efficientnet.MBConv(config, layer.stochastic_depth.p, _norm_like(layer))


class RegNetX400MFCut(MobileCut):
    """torchvision RegNetX-400MF cut as stem + 22 ResBottleneckBlocks (stage depths 1, 2, 7, 12) -> L = 23.

    Head = GAP -> flatten -> fc. Aux blocks are ResBottleneckBlocks with the layer's group width and
    bottleneck multiplier (read off the layer's grouped 3x3 conv) and a projection when shapes change.
    """

    def __init__(self, num_classes: int = 1000, input_size: int = 224):
        tv = torchvision.models.regnet_x_400mf(weights=None, num_classes=num_classes)
        layers = [tv.stem] + [block for stage in tv.trunk_output for block in stage.children()]
        shapes = trace_shapes(layers, input_size, "regnetx_400mf")
        kinds = ["C"] + ["R"] * (len(layers) - 1)
        info = make_infos(shapes, [c for c, _ in shapes], kinds)
        head = nn.Sequential(tv.avgpool, nn.Flatten(), tv.fc)
        super().__init__(tv, "regnet_x_400mf", layers, head, info, num_classes, input_size, "regnetx_400mf")

    def aux_block(self, j: int, in_channels: int, stride: int) -> nn.Module:
        check_stride(stride)
        layer = self.layers[j]
        if j == 0:
            return _fresh_conv_norm_act(layer, in_channels, stride)
        grouped = layer.f.b[0]
        out = self.info[j].out_channels
        se_ratio = None
        if hasattr(layer.f, "se"):  # RegNetY-style blocks: SE width is relative to the block input
            se_ratio = layer.f.se.fc1.out_channels / layer.f.a[0].in_channels
        return regnet.ResBottleneckBlock(in_channels, out, stride, _norm_like(layer), type(layer.activation),
                                         group_width=grouped.out_channels // grouped.groups,
                                         bottleneck_multiplier=grouped.out_channels / out, se_ratio=se_ratio)

"""VGG-BN networks cut into conv-BN-ReLU local layers: VGG19 for CIFAR, torchvision's VGG13 for ImageNet."""

from __future__ import annotations

import torchvision
from auglocal.engine.models.base import LayeredModel
from auglocal.engine.models.torchvision_cuts import TorchvisionCut, check_stride, make_infos, trace_shapes
from torch import nn
from torchvision.models import vgg as tv_vgg

#: hidden width of the paper's VGG aux classifier (4096 in the primary, "changed to 512", docs/method.md 3.5)
AUX_HIDDEN = 512


def cut_vgg_features(features: nn.Sequential) -> tuple[list[nn.Sequential], nn.Sequential]:
    """Group a torchvision VGG `features` stack into local layers ([maxpool] + conv + BN + ReLU).

    A max-pool belongs to the conv that follows it (docs/method.md 1.2; the paper's VGG13 code attaches aux nets
    before each pool), so an aux net sees the unpooled output of its layer and its own pool-on-channel-change
    rule (docs/method.md 3.4) reproduces the primary's spatial sizes. The trailing pool has no following conv; it
    is returned separately and goes into the head.
    """
    layers, pending = [], []
    for module in features:
        pending.append(module)
        if isinstance(module, nn.ReLU):
            layers.append(nn.Sequential(*pending))
            pending = []
    return layers, nn.Sequential(*pending)


def vgg_init(module: nn.Module) -> None:
    """torchvision's VGG init (docs/method.md 1.3): conv kaiming fan_out, bias 0; BN 1/0; Linear N(0, 0.01), 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def vgg_aux_classifier(num_classes: int) -> nn.Sequential:
    """The paper's VGG aux classifier: flatten -> adaptive 1-D avg pool to 512 -> 2 x (FC-BN1d-ReLU) -> FC.

    The 1-D pool runs over each sample's flattened C*H*W vector (a 2-D input is pooled along its last axis),
    which for C = 512 is per-channel global average pooling; it accepts any input shape.
    """
    return nn.Sequential(
        nn.Flatten(),
        nn.AdaptiveAvgPool1d(AUX_HIDDEN),
        nn.Linear(AUX_HIDDEN, AUX_HIDDEN), nn.BatchNorm1d(AUX_HIDDEN), nn.ReLU(inplace=True),
        nn.Linear(AUX_HIDDEN, AUX_HIDDEN), nn.BatchNorm1d(AUX_HIDDEN), nn.ReLU(inplace=True),
        nn.Linear(AUX_HIDDEN, num_classes),
    )


class VggHooks:
    """Aux-net hooks shared by the VGG models (docs/method.md 3.4 VGG variant, 3.5, 1.3).

    An aux block halves the spatial size the way the primary does, with a leading MaxPool2d(2, 2), so
    `stride=2` means "pool first" rather than a strided conv. Aux nets keep PyTorch's default init: the
    paper's code creates them after its init loop.
    """

    family = "vgg"
    aux_downsample = "maxpool"

    def aux_block(self, j: int, in_channels: int, stride: int) -> nn.Module:
        check_stride(stride)
        width = self.info[j].width
        pool = [nn.MaxPool2d(kernel_size=2, stride=2)] if stride == 2 else []
        return nn.Sequential(*pool, nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
                             nn.BatchNorm2d(width), nn.ReLU(inplace=True))

    def aux_head(self, in_channels: int, k: int) -> nn.Module:
        return vgg_aux_classifier(self.num_classes)

    def init_aux(self, module: nn.Module) -> None:
        """Nothing: VGG aux nets keep PyTorch's default init (docs/method.md 1.3)."""


class Vgg19(VggHooks, LayeredModel):
    """VGG19-BN for 32x32 (or 96x96) inputs: 16 local layers, each [maxpool] + conv3x3 (bias) + BN + ReLU.

    The paper does not release CIFAR VGG19, so two choices are ours:
    - Head = the fifth max-pool -> global average pool -> Linear(512 -> classes): the usual CIFAR VGG head
      (on 32x32 the pool leaves 1x1, so the GAP is a no-op; on 96x96 it averages the 3x3 map).
    - Aux classifier = the paper's ImageNet VGG aux classifier (its code uses one VGG aux class for VGG13
      and VGG19), not a copy of this Linear head.
    Conv/BN/Linear init as torchvision's VGG. Pools precede layers 2, 4, 8, 12 (0-based).
    """

    convention = "cifar"

    def __init__(self, num_classes: int = 10, input_size: int = 32):
        layers, tail = cut_vgg_features(tv_vgg.make_layers(tv_vgg.cfgs["E"], batch_norm=True))
        shapes = trace_shapes(layers, input_size, "vgg19")
        info = make_infos(shapes, [c for c, _ in shapes], ["C"] * len(layers))
        classifier = nn.Linear(shapes[-1][0], num_classes)
        head = nn.Sequential(*tail, nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier)
        super().__init__(layers, head, info, num_classes, input_size, "vgg19")
        vgg_init(self)


class Vgg13(VggHooks, TorchvisionCut):
    """torchvision's VGG13-BN, L = 10 conv-BN-ReLU layers; pools lead layers 2, 4, 6, 8 (0-based).

    The fifth pool sits at the start of the head: head = maxpool -> AdaptiveAvgPool(7x7) -> flatten ->
    torchvision's classifier (25088 -> 4096 -> 4096 -> classes, ReLU + Dropout). Spatial sizes on 224x224:
    224, 224, 112, 112, 56, 56, 28, 28, 14, 14. Primary init is torchvision's (docs/method.md 1.3).
    """

    convention = "imagenet"

    def __init__(self, num_classes: int = 1000, input_size: int = 224):
        tv = torchvision.models.vgg13_bn(weights=None, num_classes=num_classes)
        layers, tail = cut_vgg_features(tv.features)
        shapes = trace_shapes(layers, input_size, "vgg13")
        info = make_infos(shapes, [c for c, _ in shapes], ["C"] * len(layers))
        head = nn.Sequential(*tail, tv.avgpool, nn.Flatten(), tv.classifier)
        super().__init__(tv, "vgg13_bn", layers, head, info, num_classes, input_size, "vgg13")

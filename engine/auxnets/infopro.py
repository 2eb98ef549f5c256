"""InfoPro aux net as re-implemented in the AugLocal code: CE head + image reconstruction (docs/method.md 5.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from auglocal.engine.auxnets.base import AuxNet, require_layout
from auglocal.engine.auxnets.deterministic import deterministic_on, interpolate_bilinear
from auglocal.engine.auxnets.rule import AuxSpec, Rule, all_but_last, initialised
from auglocal.engine.models.base import LayeredModel
from torch import nn

CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)

#: (lambda1 first, last), (lambda2 first, last): reconstruction and CE weights of the AugLocal run scripts
WEIGHTS_RESNET32 = ((5.0, 0.2), (0.05, 0.5))
WEIGHTS_RESNET110 = ((5.0, 0.5), (0.0, 1.0))


def infopro_weights(num_layers: int, index: int, num_aux: int) -> tuple[float, float]:
    """(lambda1, lambda2) of aux net `index` of `num_aux`, linear from the first to the last aux net.

    The paper only gives weight sets for ResNet-32 and ResNet-110; a model with L <= 16 local layers uses the
    ResNet-32 set, a deeper one the ResNet-110 set.
    """
    (a1, a2), (b1, b2) = WEIGHTS_RESNET32 if num_layers <= 16 else WEIGHTS_RESNET110
    ratio = index / (num_aux - 1) if num_aux > 1 else 0.0
    return a1 * (1 - ratio) + a2 * ratio, b1 * (1 - ratio) + b2 * ratio


class InfoProAux(AuxNet):
    """loss = lambda1 * BCE(decoder(h), unnormalised x) + lambda2 * CE(head(h), y).

    CE head "1c2f": 3x3 conv C->2C stride 2 (C->C stride 1 once C is the model's widest layer) -> BN -> ReLU
    -> GAP -> FC 128 -> ReLU -> FC classes. Decoder "2c": bilinear upsample (align_corners) to the input size
    -> 3x3 conv C->12 -> BN -> ReLU -> 3x3 conv 12->3 -> sigmoid. The BCE target is the image in [0, 1],
    recovered from the normalised input with the dataset's per-channel mean and std.
    """

    needs_input = True

    def __init__(self, layer: int, channels: int, max_channels: int, num_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...], recon_weight: float, ce_weight: float):
        if len(mean) != len(std):
            raise ValueError(f"input_mean and input_std need one value per image channel, got {mean} and "
                             f"{std}")
        wide = channels >= max_channels
        out = channels if wide else 2 * channels
        stride = 1 if wide else 2
        image_channels = len(mean)
        super().__init__(layer, f"{out}C3{'' if wide else 's2'}-AP-128FC-{num_classes}FC"
                                f"+UP-12C3-{image_channels}C3-SIG")
        self.recon_weight = recon_weight
        self.ce_weight = ce_weight
        self.head = nn.Sequential(
            nn.Conv2d(channels, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out, 128), nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, 12, 3, 1, 1), nn.BatchNorm2d(12), nn.ReLU(inplace=True),
            nn.Conv2d(12, image_channels, 3, 1, 1), nn.Sigmoid(),
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)

    def reconstruct(self, h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The decoder's image in [0, 1] at the input resolution `size`. Bilinear upsampling has no deterministic
        CUDA backward: under deterministic algorithms it runs as the same fixed linear map by matmul."""
        if deterministic_on():
            up = interpolate_bilinear(h, size)
        else:
            up = F.interpolate(h, size=size, mode="bilinear", align_corners=True)
        return self.decoder(up)

    def forward(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        if x is None:
            raise ValueError("the InfoPro aux net reconstructs the network input: call it as aux(h, y, x)")
        target = (x * self.std + self.mean).clamp(0, 1)
        recon = F.binary_cross_entropy(self.reconstruct(h, tuple(x.shape[-2:])), target)
        return self.recon_weight * recon + self.ce_weight * F.cross_entropy(self.logits(h), y)


def build_infopro_nets(model: LayeredModel, n: int, spec: AuxSpec) -> list[AuxNet]:
    require_layout(model, n, "infopro", ("map",), "InfoPro decodes the input image from a feature map by "
                   "upsampling it; tokens or features have no image layout, so there is no faithful analogue; use "
                   "auglocal, dgl or predsim")
    widest = max(x.out_channels for x in model.info)
    nets = []
    for i in range(n):
        recon_weight, ce_weight = infopro_weights(model.num_layers, i, n)
        nets.append(InfoProAux(i, model.info[i].out_channels, widest, model.num_classes, spec.input_mean,
                               spec.input_std, recon_weight, ce_weight))
    return initialised(model, nets)


RULE = Rule("infopro", "InfoPro: CE + image-reconstruction loss on every layer but the last", build_infopro_nets,
            all_but_last)

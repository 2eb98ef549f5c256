"""DGL aux net as re-implemented in the AugLocal code ("MLP-SR-aux", docs/method.md 5.1)."""

from __future__ import annotations

import math

import torch
from auglocal.engine.auxnets.base import AuxNet, TokenMean, require_layout
from auglocal.engine.auxnets.deterministic import AdaptiveAvgPool2d
from auglocal.engine.auxnets.rule import AuxSpec, Rule, all_but_last, initialised
from auglocal.engine.models.base import LayeredModel
from torch import nn

#: whose code sizes the first pool: "dgl" (DGL's own, the default) or "auglocal" (the AugLocal ImageNet code's)
DGL_POOLS = ("dgl", "auglocal")


def fc_part(width: int, num_classes: int) -> nn.Sequential:
    """DGL's classifier after its last pool: 2 x [FC width->width, BN1d, ReLU] -> FC to the classes."""
    return nn.Sequential(
        nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
        nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
        nn.Linear(width, num_classes),
    )


class DGLAux(AuxNet):
    """AP to ceil(S/4) -> 3 x [1x1 conv C->C, BN, ReLU] -> AP to m x m -> 2 x [FC, BN1d, ReLU] -> FC.

    m = min(ceil(S/4), 2). The hidden FC width equals the flattened size C*m*m (4C whenever S > 4, as in the
    paper's "AP-16C1-16C1-16C1-AP-64FC-64FC-10FC"); for S <= 4 (m = 1, e.g. VGG's last layers) it is C.
    S is the layer's actual output size (LayerInfo.spatial) in DGL's own code; the AugLocal ImageNet code fixes
    it per width instead (see `pool_sizes`). Loss: mean cross-entropy, weight 1. The pools switch to a
    deterministic formulation under deterministic algorithms (engine/auxnets/deterministic.py).
    """

    def __init__(self, layer: int, channels: int, spatial: int, num_classes: int):
        first = math.ceil(spatial / 4)
        m = min(first, 2)
        flat = channels * m * m
        convs: list[nn.Module] = []
        for _ in range(3):
            convs += [nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                      nn.ReLU(inplace=True)]
        parts = ["AP"] + [f"{channels}C1"] * 3 + ["AP", f"{flat}FC", f"{flat}FC", f"{num_classes}FC"]
        super().__init__(layer, "-".join(parts))
        self.features = nn.Sequential(AdaptiveAvgPool2d(first), *convs, AdaptiveAvgPool2d(m),
                                      nn.Flatten())
        self.classifier = fc_part(flat, num_classes)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(h))


class TokenDGLAux(AuxNet):
    """DGL on (N, D) tokens (docs/method.md, "Stacks of blocks"): 3 x [token-wise Linear D->D, LayerNorm, ReLU]
    -> mean over tokens -> 2 x [FC D->D, BN1d, ReLU] -> FC.

    The 1x1 convs are token-wise linear maps, BN over a map's positions becomes LayerNorm (a transformer's norm);
    tokens have no grid to pool to ceil(S/4) or to 2 x 2, so the first pool is left out and the second is the
    mean over all tokens, i.e. the m = 1 case of DGLAux (hidden FC width = D)."""

    def __init__(self, layer: int, dim: int, num_classes: int):
        super().__init__(layer, "-".join([f"{dim}T"] * 3 + ["AP", f"{dim}FC", f"{dim}FC", f"{num_classes}FC"]))
        mixers: list[nn.Module] = []
        for _ in range(3):
            mixers += [nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*mixers, TokenMean())
        self.classifier = fc_part(dim, num_classes)

    logits = DGLAux.logits


def pool_sizes(model: LayeredModel, dgl_pool: str) -> list[int]:
    """The S of each layer's DGL aux net (docs/method.md 5.1).

    "dgl": the layer's own output size, as DGL's code. "auglocal": the output size of the first layer as wide as
    this one, as the AugLocal ImageNet code has it (`size_dgl = 224 // 8` for every 512-channel layer of VGG13, so
    layer 8 at 14x14 pools to 7x7, not to 4x4). Where each width has one resolution (the ResNets) both agree.
    `build_aux_nets` has checked `dgl_pool` against DGL_POOLS.
    """
    if dgl_pool == "dgl":
        return [info.spatial for info in model.info]
    first: dict[int, int] = {}
    for info in model.info:
        first.setdefault(info.out_channels, info.spatial)
    return [first[info.out_channels] for info in model.info]


def build_dgl_nets(model: LayeredModel, n: int, spec: AuxSpec) -> list[AuxNet]:
    require_layout(model, n, "dgl", ("map", "tokens"), "DGL pools feature maps or token sequences; use auglocal")
    sizes = pool_sizes(model, spec.dgl_pool)
    return initialised(model, [
        TokenDGLAux(i, info.width, model.num_classes) if info.layout == "tokens"
        else DGLAux(i, info.out_channels, sizes[i], model.num_classes) for i, info in enumerate(model.info[:n])])


RULE = Rule("dgl", "DGL: an MLP-SR aux classifier on every layer but the last", build_dgl_nets, all_but_last)

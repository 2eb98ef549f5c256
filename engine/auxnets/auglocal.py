"""AugLocal aux nets: fresh copies of selected primary layers and of the head (docs/method.md 3.2-3.5, 5.5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from auglocal.engine.auxnets.base import AuxNet, head_notation
from auglocal.engine.auxnets.selection import select_layers
from auglocal.engine.models.base import LayeredModel
from torch import nn

#: families whose aux strides follow log2 of the width ratio, exactly as the paper's ResNet code does
WIDTH_RATIO_FAMILIES = ("cifar_resnet", "imagenet_resnet")


@dataclass(frozen=True)
class AuxStep:
    """One element of an aux net: a fresh block with layer `layer`'s architecture.

    stride 2 means "halve the resolution here": a stride-2 block, or for maxpool families (VGG) a
    MaxPool2d(2, 2) before the block (the model's `aux_block` hook builds either).
    """

    layer: int
    in_channels: int
    out_channels: int
    stride: int


def halvings(model: LayeredModel, cur: int, j: int) -> int:
    """How many times the spatial size halves when going from primary layer `cur` to layer `j`.

    ResNet families use round(log2(width_j / width_cur)), the paper's rule (widths double exactly when the
    resolution halves). For other stride-downsampling families (MobileNetV2, EfficientNet, RegNet) width
    ratios are not powers of two and do not track resolution, so the spatial ratio
    log2(spatial_cur / spatial_j) of the model's configured input size is used instead.
    """
    info = model.info
    if model.family in WIDTH_RATIO_FAMILIES:
        ratio = info[j].width / info[cur].width
    else:
        ratio = info[cur].spatial / info[j].spatial
    return round(math.log2(ratio))


def plan_aux(model: LayeredModel, layer: int, selected: list[int]) -> list[AuxStep]:
    """Channels and downsampling of each aux block (docs/method.md 3.4).

    stride families: a counter accumulates the halvings between consecutive selected layers; a block gets
    stride 2 when the counter is >= 1 (and the counter drops by 1), so at most one stride-2 per block and any
    excess carries over to the next block (lost after the last one). The primary layer's own stride is never
    copied. maxpool families (VGG): the block halves (MaxPool2d(2, 2) first) whenever the width changes, one
    pool per change whatever the ratio. Each block takes the previous element's output channels.
    """
    steps: list[AuxStep] = []
    in_channels = model.info[layer].out_channels
    cur, carry = layer, 0
    for j in selected:
        stride = 1
        if model.aux_downsample == "maxpool":
            if model.info[j].width != model.info[cur].width:
                stride = 2
        else:
            carry += halvings(model, cur, j)
            if carry >= 1:
                stride, carry = 2, carry - 1
        out_channels = model.aux_block_out_channels(j)
        steps.append(AuxStep(j, in_channels, out_channels, stride))
        in_channels, cur = out_channels, j
    return steps


class AugLocalAux(AuxNet):
    """body (aux blocks) -> head (copy of the primary classifier); loss = mean cross-entropy, weight 1."""

    def __init__(self, layer: int, selected: list[int], body: nn.Sequential, head: nn.Module, notation: str):
        super().__init__(layer, notation, selected)
        self.body = body
        self.head = head

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(h))


def step_notation(model: LayeredModel, step: AuxStep, body: str) -> str:
    """`body` ('32R', '256C') marked as halving: '32Rs2' for a stride-2 block, 'M-256C' after a max-pool."""
    if step.stride == 1:
        return body
    return f"M-{body}" if model.aux_downsample == "maxpool" else f"{body}s2"


def build_block_aux(model: LayeredModel, layer: int, selected: list[int]) -> AugLocalAux:
    """An aux net of fresh blocks copying `selected` layers' architectures, then a fresh head, then init.

    A stack of blocks (engine/models/stack.py) copies its blocks and head itself, initialised as they are."""
    if model.builds_aux_by_copy:
        body_blocks, head, parts = model.copy_aux(layer, selected)
        return AugLocalAux(layer, selected, nn.Sequential(*body_blocks), head,
                           "-".join(parts + [head_notation(head)]))
    steps = plan_aux(model, layer, selected)
    body = nn.Sequential(*[model.aux_block(s.layer, s.in_channels, s.stride) for s in steps])
    head = model.aux_head(steps[-1].out_channels, len(selected))
    parts = [step_notation(model, s, f"{model.info[s.layer].width}{model.info[s.layer].kind}") for s in steps]
    aux = AugLocalAux(layer, selected, body, head, "-".join(parts + [head_notation(head)]))
    model.init_aux(aux)
    return aux


def uniform_selection(layer: int, k: int, num_layers: int) -> list[int]:
    """AugLocal: k layers sampled uniformly from layer+1..L-1 (docs/method.md 3.2)."""
    return select_layers(layer, k, num_layers)


def sequential_selection(layer: int, k: int, num_layers: int) -> list[int]:
    """Ablation 'sequential': the k consecutive layers layer+1..layer+k, clamped to L-1 (docs/method.md 5.5)."""
    return list(range(layer + 1, min(layer + k, num_layers - 1) + 1))


def repetitive_selection(layer: int, k: int, num_layers: int) -> list[int]:
    """Ablation 'repetitive': k copies of layer `layer`'s own architecture (docs/method.md 5.5)."""
    return [layer] * k


SELECTIONS = {
    "uniform": uniform_selection,
    "sequential": sequential_selection,
    "repetitive": repetitive_selection,
}


def build_auglocal_nets(model: LayeredModel, ks: list[int], strategy: str = "uniform") -> list[AugLocalAux]:
    """Block aux nets for layers 0..len(ks)-1, layer i copying ks[i] layers chosen by `strategy`.

    Depth is capped at the L - 1 - i layers above layer i for every strategy (uniform selection's clamp),
    so an ablation always has the same depth as the AugLocal aux net it is compared with.
    """
    select = SELECTIONS[strategy]
    nets = []
    for i, k in enumerate(ks):
        k = min(k, model.num_layers - 1 - i)
        nets.append(build_block_aux(model, i, select(i, k, model.num_layers)))
    return nets

"""AuxNet: the common interface of every auxiliary network (a local loss on one layer's output)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AuxNet(nn.Module):
    """An auxiliary network attached to the output h of primary layer `layer`; `forward` is its local loss.

    The learning rules and the trainers only ever need "a scalar loss from (h, y[, x])", whatever the
    method inside, so every rule's aux net has this one call shape. `logits(h)` exposes the classifier
    output (for accuracy logging and tests). `needs_input` tells the trainer to pass the network input x
    (InfoPro reconstructs it). `notation` is the paper's compact description ("32Rs2-64R-AP-10FC").
    `selected` lists the primary layers whose architectures were copied (empty for the baselines).
    """

    needs_input: bool = False

    def __init__(self, layer: int, notation: str, selected: list[int] | None = None):
        super().__init__()
        self.layer = layer
        self.notation = notation
        self.selected = list(selected or [])

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Class scores (batch, classes) predicted from the layer output h."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar local loss; the default is the mean cross-entropy of `logits(h)` (weight 1)."""
        return F.cross_entropy(self.logits(h), y)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, notation={self.notation!r}"


def head_notation(head: nn.Module) -> str:
    """Paper-style notation of a classifier head, read from its modules: 'AP-10FC', 'AP-BN-10FC', ...

    AP = any average pooling, BN = BatchNorm1d, LN = LayerNorm (a ViT's head), <n>FC = Linear with n outputs.
    Reading the modules (in
    registration order, which is forward order for the heads in this project) keeps the notation true to
    whatever head the model's `aux_head` hook builds.
    """
    parts: list[str] = []
    for m in head.modules():
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d, nn.AvgPool2d)):
            parts.append("AP")
        elif isinstance(m, nn.BatchNorm1d):
            parts.append("BN")
        elif isinstance(m, nn.LayerNorm):
            parts.append("LN")
        elif isinstance(m, nn.Linear):
            parts.append(f"{m.out_features}FC")
    return "-".join(parts)


class TokenMean(nn.Module):
    """(B, N, D) tokens -> (B, D): the average pooling of a token sequence, which has no 2-D layout to pool in
    (DGL's and PredSim's token forms)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=1)


def require_layout(model, n: int, rule: str, allowed: tuple[str, ...], why: str) -> None:
    """ValueError naming the rule and the first of layers 0..n-1 whose output layout (LayerInfo.layout: map,
    tokens, vector) the rule has no aux net for."""
    for info in model.info[:n]:
        if info.layout not in allowed:
            raise ValueError(f"rule {rule!r} has no aux net for layer {info.index} of {model.name}, which emits "
                             f"{info.layout} (width {info.width}, size {info.spatial}): {why}")

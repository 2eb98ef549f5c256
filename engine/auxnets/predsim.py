"""PredSim aux net (Nokland & Eidnes 2019) as re-implemented in the AugLocal code (docs/method.md 5.2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from auglocal.engine.auxnets.base import AuxNet, TokenMean, require_layout
from auglocal.engine.auxnets.rule import AuxSpec, Rule, all_but_last, initialised
from auglocal.engine.models.base import LayeredModel
from torch import nn


def similarity_matrix(t: torch.Tensor) -> torch.Tensor:
    """Batch x batch cosine-similarity matrix of row-centred features, clamped to [-1, 1].

    A 4-D tensor with more than 3 channels and more than one spatial position is first reduced to the
    spatial standard deviation of each channel (as in the PredSim code; the std of a single position would
    be undefined); (B, N, D) tokens likewise to the std of each feature over the tokens; anything else is
    flattened per sample.
    """
    if t.dim() == 4 and t.size(1) > 3 and t.size(2) * t.size(3) > 1:
        t = t.flatten(2).std(dim=2)
    elif t.dim() == 3 and t.size(2) > 3 and t.size(1) > 1:
        t = t.std(dim=1)
    else:
        t = t.flatten(1)
    centred = t - t.mean(dim=1, keepdim=True)
    normed = centred / (1e-8 + centred.pow(2).sum(dim=1, keepdim=True).sqrt())
    return (normed @ normed.t()).clamp(-1, 1)


def grown_pool(channels: int, spatial: int, max_dim: int) -> tuple[nn.Module, int]:
    """Average pool whose kernel doubles alternately in h and w until channels*h*w <= max_dim.

    Returns the pool (Identity if no pooling is needed) and the flattened size it produces. Kernels that do
    not divide the input are padded so the output has ceil(spatial / kernel) positions per axis.
    """
    kh = kw = 1
    out_h = out_w = spatial
    dim = channels * out_h * out_w
    while dim > max_dim and kh < spatial:
        kh *= 2
        out_h = math.ceil(spatial / kh)
        dim = channels * out_h * out_w
        if dim > max_dim:
            kw *= 2
            out_w = math.ceil(spatial / kw)
            dim = channels * out_h * out_w
    if kh == 1 and kw == 1:
        return nn.Identity(), dim
    pad_h = (kh * (out_h - spatial // kh)) // 2
    pad_w = (kw * (out_w - spatial // kw)) // 2
    return nn.AvgPool2d((kh, kw), padding=(pad_h, pad_w)), dim


class PredSimAux(AuxNet):
    """Prediction head (grown avg-pool -> Linear, CE) + similarity head (3x3 conv, similarity-matching MSE).

    loss = sim_weight * MSE(S(conv(h)), S(onehot(y))) + pred_weight * CE(pred(h), y), weights 0.99 / 0.01
    constant over depth (the AugLocal run script). Linear layers keep torch's default init.
    """

    def __init__(self, layer: int, channels: int, spatial: int, num_classes: int, max_dim: int = 512,
                 sim_weight: float = 0.99, pred_weight: float = 0.01):
        pool, dim = grown_pool(channels, spatial, max_dim)
        super().__init__(layer, f"AP-{num_classes}FC+{channels}C3-SIM")
        self.num_classes = num_classes
        self.sim_weight = sim_weight
        self.pred_weight = pred_weight
        self.pool = pool
        self.pred = nn.Linear(dim, num_classes)
        self.sim_conv = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.pred(self.pool(h).flatten(1))

    def forward(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        pred_loss = F.cross_entropy(self.logits(h), y)
        target = similarity_matrix(F.one_hot(y, self.num_classes).to(h.dtype))
        sim_loss = F.mse_loss(similarity_matrix(self.sim_conv(h)), target)
        return self.sim_weight * sim_loss + self.pred_weight * pred_loss


class TokenPredSimAux(PredSimAux):
    """PredSim on (N, D) tokens (docs/method.md, "Stacks of blocks"): prediction = mean over tokens -> Linear (the
    grown average pool of a map, down to one position), similarity = token-wise Linear D->D (a 1x1 stand-in for
    the 3x3 conv, which needs a grid) -> per-feature std over tokens -> cosine similarity."""

    def __init__(self, layer: int, dim: int, num_classes: int, sim_weight: float = 0.99, pred_weight: float = 0.01):
        AuxNet.__init__(self, layer, f"AP-{num_classes}FC+{dim}T-SIM")
        self.num_classes = num_classes
        self.sim_weight = sim_weight
        self.pred_weight = pred_weight
        self.pool = TokenMean()
        self.pred = nn.Linear(dim, num_classes)
        self.sim_conv = nn.Linear(dim, dim, bias=False)


def build_predsim_nets(model: LayeredModel, n: int, spec: AuxSpec) -> list[AuxNet]:
    require_layout(model, n, "predsim", ("map", "tokens"), "its similarity head needs a feature map or tokens")
    return initialised(model, [
        TokenPredSimAux(i, info.width, model.num_classes) if info.layout == "tokens"
        else PredSimAux(i, info.out_channels, info.spatial, model.num_classes)
        for i, info in enumerate(model.info[:n])])


RULE = Rule("predsim", "PredSim: prediction + similarity-matching loss on every layer but the last",
            build_predsim_nets, all_but_last)

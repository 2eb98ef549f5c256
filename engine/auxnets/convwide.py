"""Ablation aux nets of plain 1x1 / 3x3 conv layers widened to the FLOPs of AugLocal's (docs/method.md 5.5)."""

from __future__ import annotations

import math
from collections.abc import Callable

from auglocal.engine.auxnets.auglocal import AugLocalAux, AuxStep, build_block_aux, plan_aux, step_notation
from auglocal.engine.auxnets.base import head_notation
from auglocal.engine.auxnets.macs import meta_macs
from auglocal.engine.auxnets.selection import select_layers
from auglocal.engine.models.base import LayeredModel
from torch import nn

_MAX_WIDEN = 2.0**12


def conv_channels(steps: list[AuxStep], widen: float) -> list[int]:
    """Each conv's width: the uniform aux block's output channels times the common factor `widen`."""
    return [max(1, round(widen * s.out_channels)) for s in steps]


def build_conv_aux(model: LayeredModel, layer: int, steps: list[AuxStep], channels: list[int],
                   kernel_size: int, selected: list[int]) -> AugLocalAux:
    """k plain conv-BN-ReLU layers with the uniform plan's strides/pools and given widths, then the head."""
    modules: list[nn.Module] = []
    parts: list[str] = []
    in_channels = model.info[layer].out_channels
    pool = model.aux_downsample == "maxpool"
    for step, out_channels in zip(steps, channels, strict=True):
        stride = step.stride
        if pool and stride == 2:
            modules.append(nn.MaxPool2d(2, 2))
            stride = 1
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        modules += [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        parts.append(step_notation(model, step, f"{out_channels}C{kernel_size}"))
        in_channels = out_channels
    head = model.aux_head(in_channels, len(steps))
    aux = AugLocalAux(layer, selected, nn.Sequential(*modules), head, "-".join(parts + [head_notation(head)]))
    model.init_aux(aux)
    return aux


def match_widen(target: int, macs_at: Callable[[float], int], max_channels: int, rtol: float = 0.005) -> float:
    """The factor w whose MACs come closest to `target`, assuming macs_at(w) is non-decreasing in w.

    Search: from w = 1, double (or halve) w until [lo, hi] brackets the target, halving no further once every
    conv is down to one channel. Then shrink the bracket by regula falsi on log(MACs) vs log(w) (MACs grow
    roughly as a power of w), each step kept inside the inner 80 % of the bracket so it always shrinks, until
    one end is within `rtol` of the target or the bracket is 0.1 % wide; return the end closer to the target.
    Channel counts are rounded, so MACs are a step function of w: the result is the best common factor
    found, not an exact match (within 1 % for every model in the registry).
    """
    lo = hi = 1.0
    while macs_at(hi) < target:
        lo, hi = hi, hi * 2
        if hi > _MAX_WIDEN:
            raise RuntimeError(f"cannot widen conv aux net to {target} MACs (w > {_MAX_WIDEN})")
    while macs_at(lo) > target and lo * max_channels >= 0.5:
        lo, hi = lo / 2, lo
    f_lo, f_hi = macs_at(lo), macs_at(hi)
    while hi / lo > 1.001 and f_lo < (1 - rtol) * target and f_hi > (1 + rtol) * target:
        t = math.log(target / f_lo) / math.log(f_hi / f_lo) if f_lo > 0 else 0.5
        mid = lo * (hi / lo) ** min(max(t, 0.1), 0.9)
        f_mid = macs_at(mid)
        if f_mid < target:
            lo, f_lo = mid, f_mid
        else:
            hi, f_hi = mid, f_mid
    return min((lo, hi), key=lambda w: abs(macs_at(w) - target))


class ConvAuxBuilder:
    """Builds 'conv1x1' / 'conv3x3' aux nets, caching MAC counts across layers of one model.

    The plan (strides, pools, base channels, depth k) is that of the uniform AugLocal aux net of the same
    layer and depth; every conv width is that plan's channel count times one factor per aux net, found by
    `match_widen` against the uniform aux net's forward MACs (both counted with FlopCounterMode at batch 1
    on the layer's output shape). Many layers share a plan, so searches are cached by (plan, target).
    """

    def __init__(self, model: LayeredModel, kernel_size: int):
        self.model = model
        self.kernel_size = kernel_size
        self._macs: dict[tuple, int] = {}
        self._widen: dict[tuple, float] = {}

    def build(self, layer: int, k: int) -> AugLocalAux:
        model = self.model
        selected = select_layers(layer, k, model.num_layers)
        steps = plan_aux(model, layer, selected)
        info = model.info[layer]
        shape = (1, info.out_channels, info.spatial, info.spatial)
        target = meta_macs(lambda: build_block_aux(model, layer, selected), shape, "logits")
        signature = (shape, tuple((s.in_channels, s.out_channels, s.stride) for s in steps))

        def macs_at(widen: float) -> int:
            channels = conv_channels(steps, widen)
            key = (signature, tuple(channels))
            if key not in self._macs:
                self._macs[key] = meta_macs(
                    lambda: build_conv_aux(model, layer, steps, channels, self.kernel_size, selected),
                    shape, "logits")
            return self._macs[key]

        key = (signature, target)
        if key not in self._widen:
            max_channels = max(s.out_channels for s in steps)
            self._widen[key] = match_widen(target, macs_at, max_channels)
        channels = conv_channels(steps, self._widen[key])
        return build_conv_aux(model, layer, steps, channels, self.kernel_size, selected)


def build_conv_nets(model: LayeredModel, ks: list[int], kernel_size: int) -> list[AugLocalAux]:
    """Conv aux nets for layers 0..len(ks)-1 with depths ks, each about as costly as AugLocal's."""
    builder = ConvAuxBuilder(model, kernel_size)
    return [builder.build(i, k) for i, k in enumerate(ks)]

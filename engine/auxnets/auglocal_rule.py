"""AugLocal as a rule: pyramidal depths, then block aux nets (engine/auxnets/auglocal.py) or, for the conv1x1 /
conv3x3 ablations, conv aux nets of matched cost (engine/auxnets/convwide.py). It sits in a file of its own
because convwide builds on auglocal's blocks, so the rule that picks between them has to import both."""

from __future__ import annotations

from auglocal.engine.auxnets.auglocal import build_auglocal_nets
from auglocal.engine.auxnets.base import AuxNet
from auglocal.engine.auxnets.convwide import build_conv_nets
from auglocal.engine.auxnets.rule import AuxSpec, Rule
from auglocal.engine.auxnets.selection import pyramid_ks
from auglocal.engine.models.base import LayeredModel

CONV_STRATEGIES = {"conv1x1": 1, "conv3x3": 3}


def auglocal_local_layers(num_layers: int, k: int, convention: str) -> int:
    """cifar convention: the top k + 1 = d layers have no aux net, n = L - k - 1 (docs/method.md 2A; the FLOPs of
    Table 7 only match this); imagenet convention: n = L - 1. 0 (never negative) when k leaves no local layer."""
    if k < 1:
        raise ValueError(f"k (number of selected layers, = d - 1) must be >= 1, got {k}")
    if convention == "cifar":
        return max(0, num_layers - k - 1)
    return max(0, num_layers - 1)


def build_rule_nets(model: LayeredModel, n: int, spec: AuxSpec) -> list[AuxNet]:
    ks = pyramid_ks(spec.d - 1, n, spec.tau)
    if spec.strategy in CONV_STRATEGIES:
        if model.builds_aux_by_copy:
            model.aux_block(0, 0, 1)     # a stack of blocks cannot rebuild them wider: its hook says so
        return list(build_conv_nets(model, ks, kernel_size=CONV_STRATEGIES[spec.strategy]))
    return list(build_auglocal_nets(model, ks, spec.strategy))


RULE = Rule("auglocal", "AugLocal: each aux net copies a uniform selection of the layers above it",
            build_rule_nets, auglocal_local_layers)

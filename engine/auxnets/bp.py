"""End-to-end backpropagation as a rule: no aux nets, the whole network is one top module (the baseline every
local rule is compared with)."""

from __future__ import annotations

from auglocal.engine.auxnets.base import AuxNet
from auglocal.engine.auxnets.rule import AuxSpec, Rule
from auglocal.engine.models.base import LayeredModel


def no_local_layers(num_layers: int, k: int, convention: str) -> int:
    return 0


def build_no_nets(model: LayeredModel, n: int, spec: AuxSpec) -> list[AuxNet]:
    return []


RULE = Rule("bp", "end-to-end backpropagation: no aux nets, one global loss", build_no_nets, no_local_layers)

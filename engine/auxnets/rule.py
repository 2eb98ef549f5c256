"""What a learning rule is, as one record, kept apart from registry.py so that each rule's own file can declare
its entry without importing the registry that collects it (no import cycle)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from auglocal.engine.auxnets.base import AuxNet
from auglocal.engine.models.base import LayeredModel


@dataclass(frozen=True)
class AuxSpec:
    """The checked build arguments a rule's builder may read: paper depth d (>= 2), pyramid decay tau, the aux-net
    strategy, the per-channel mean / std of the input normalisation (InfoPro rebuilds the raw image), and which
    code DGL's first pool follows (engine/auxnets/dgl.py)."""

    d: int
    tau: float
    strategy: str
    input_mean: tuple[float, ...]
    input_std: tuple[float, ...]
    dgl_pool: str = "dgl"


@dataclass(frozen=True)
class Rule:
    """One learning rule.

    `local_layers(num_layers, k, convention)`: how many layers 0..n-1 get an aux net (k = d - 1; the rest and the
    head train with the global loss). `build(model, n, spec)`: the n aux nets, freshly initialised, in train mode,
    on the CPU. `doc`: one line for listings.
    """

    name: str
    doc: str
    build: Callable[[LayeredModel, int, AuxSpec], list[AuxNet]]
    local_layers: Callable[[int, int, str], int]


def all_but_last(num_layers: int, k: int, convention: str) -> int:
    """Every layer but the last has an aux net, whatever d and the convention (the baselines, docs/method.md 2)."""
    return max(0, num_layers - 1)


def initialised(model: LayeredModel, nets: list[AuxNet]) -> list[AuxNet]:
    """`nets`, each initialised by the model's aux init after all were built (the baselines' RNG order)."""
    for aux in nets:
        model.init_aux(aux)
    return nets

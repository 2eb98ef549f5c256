"""Auxiliary networks of every learning rule (AugLocal + ablation strategies, DGL, PredSim, InfoPro, and BP with
none); the rules themselves are the entries of engine/auxnets/registry.py, and this module's names follow from it."""

from __future__ import annotations

import numbers

from auglocal.engine.auxnets.auglocal import AugLocalAux
from auglocal.engine.auxnets.base import AuxNet
from auglocal.engine.auxnets.dgl import DGL_POOLS, DGLAux
from auglocal.engine.auxnets.infopro import CIFAR10_MEAN, CIFAR10_STD, InfoProAux
from auglocal.engine.auxnets.macs import forward_macs
from auglocal.engine.auxnets.predsim import PredSimAux
from auglocal.engine.auxnets.registry import REGISTRY, AuxSpec, Rule, get_rule, num_local_layers
from auglocal.engine.auxnets.selection import CONVENTIONS, pyramid_ks, select_layers
from auglocal.engine.models.base import LayeredModel

#: the rule names, in the registry's order (engine/auxnets/registry.py: one file and one entry per rule)
RULES = tuple(REGISTRY)
STRATEGIES = ("uniform", "sequential", "repetitive", "conv1x1", "conv3x3")


def _check_args(model: LayeredModel, rule: str, d: int, tau: float, strategy: str, convention: str,
                dgl_pool: str) -> None:
    get_rule(rule)
    if dgl_pool not in DGL_POOLS:
        raise ValueError(f"unknown DGL pool {dgl_pool!r}; choose one of: {', '.join(DGL_POOLS)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown aux-net strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if strategy != "uniform" and rule != "auglocal":
        raise ValueError(f"strategy {strategy!r} is an AugLocal ablation; use it with rule 'auglocal' "
                         f"(rule {rule!r} takes strategy 'uniform')")
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of: {', '.join(CONVENTIONS)}")
    if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 2:
        raise ValueError(f"aux-net depth d counts the aux classifier and must be an integer >= 2, got {d!r}")
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau (pyramid decay rate) must be in [0, 1], got {tau}")
    if model.num_layers < 2:
        raise ValueError(f"{model.name} has {model.num_layers} local layer(s); local learning needs >= 2")
    if rule == "auglocal" and num_local_layers(model.num_layers, d - 1, convention, rule) < 1:
        raise ValueError(
            f"d={d} is too large for {model.name} (L={model.num_layers}) under the cifar convention: the "
            f"top d layers train with the global loss, leaving no layer with an aux net; use d in "
            f"2..{model.num_layers - 1}, or the imagenet convention")


def build_aux_nets(model: LayeredModel, rule: str, d: int = 4, tau: float = 0.0, strategy: str = "uniform",
                   convention: str | None = None, *, input_mean: tuple[float, ...] = CIFAR10_MEAN,
                   input_std: tuple[float, ...] = CIFAR10_STD, dgl_pool: str = "dgl") -> list[AuxNet]:
    """Aux nets for layers 0..n-1 of `model` (n = num_local_layers); layers n..L-1 + head train globally.

    d (paper depth, k = d - 1 selected layers) and tau (pyramid decay; the paper's CIFAR runs use 0.5, the
    default 0 means constant depth) shape only 'auglocal' aux nets, but are range-checked for every rule so
    a bad value never passes silently. `strategy` picks uniform selection or an ablation (docs/method.md 5.5) and
    must stay 'uniform' for the other rules. `convention` None means model.convention (docs/method.md section 2).
    input_mean / input_std (per image channel, of the data normalisation) let InfoPro rebuild the raw image
    it reconstructs; defaults are CIFAR-10's. `dgl_pool` picks whose code DGL's first pool follows (DGL_POOLS,
    engine/auxnets/dgl.py). Aux nets come freshly initialised (model.init_aux), in train
    mode, on the CPU; building them consumes the global torch RNG, so a seeded build is reproducible.
    """
    convention = model.convention if convention is None else convention
    _check_args(model, rule, d, tau, strategy, convention, dgl_pool)
    d = int(d)
    n = num_local_layers(model.num_layers, d - 1, convention, rule)
    return get_rule(rule).build(model, n, AuxSpec(d, tau, strategy, input_mean, input_std, dgl_pool))


__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "DGL_POOLS", "RULES", "STRATEGIES", "AugLocalAux", "AuxNet", "DGLAux", "InfoProAux",
    "PredSimAux", "Rule", "build_aux_nets", "forward_macs", "num_local_layers", "pyramid_ks", "select_layers",
]

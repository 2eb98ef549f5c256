"""Auxiliary networks of every learning rule: AugLocal (+ ablation strategies), DGL, PredSim, InfoPro."""

from __future__ import annotations

import numbers

from auglocal.engine.auxnets.auglocal import AugLocalAux, build_auglocal_nets
from auglocal.engine.auxnets.base import AuxNet
from auglocal.engine.auxnets.convwide import build_conv_nets
from auglocal.engine.auxnets.dgl import DGLAux
from auglocal.engine.auxnets.infopro import CIFAR10_MEAN, CIFAR10_STD, InfoProAux, infopro_weights
from auglocal.engine.auxnets.macs import forward_macs
from auglocal.engine.auxnets.predsim import PredSimAux
from auglocal.engine.auxnets.selection import CONVENTIONS, num_local_layers, pyramid_ks, select_layers
from auglocal.engine.models.base import LayeredModel

RULES = ("bp", "auglocal", "dgl", "predsim", "infopro")
STRATEGIES = ("uniform", "sequential", "repetitive", "conv1x1", "conv3x3")


def _check_args(model: LayeredModel, rule: str, d: int, tau: float, strategy: str, convention: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of: {', '.join(RULES)}")
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
                   input_std: tuple[float, ...] = CIFAR10_STD) -> list[AuxNet]:
    """Aux nets for layers 0..n-1 of `model` (n = num_local_layers); layers n..L-1 + head train globally.

    d (paper depth, k = d - 1 selected layers) and tau (pyramid decay; the paper's CIFAR runs use 0.5, the
    default 0 means constant depth) shape only 'auglocal' aux nets, but are range-checked for every rule so
    a bad value never passes silently. `strategy` picks uniform selection or an ablation (docs/method.md 5.5) and
    must stay 'uniform' for the other rules. `convention` None means model.convention (docs/method.md section 2).
    input_mean / input_std (per image channel, of the data normalisation) let InfoPro rebuild the raw image
    it reconstructs; defaults are CIFAR-10's. Aux nets come freshly initialised (model.init_aux), in train
    mode, on the CPU; building them consumes the global torch RNG, so a seeded build is reproducible.
    """
    convention = model.convention if convention is None else convention
    _check_args(model, rule, d, tau, strategy, convention)
    d = int(d)
    n = num_local_layers(model.num_layers, d - 1, convention, rule)
    if rule == "bp":
        return []
    if rule == "auglocal":
        ks = pyramid_ks(d - 1, n, tau)
        if strategy in ("conv1x1", "conv3x3"):
            return list(build_conv_nets(model, ks, kernel_size=1 if strategy == "conv1x1" else 3))
        return list(build_auglocal_nets(model, ks, strategy))
    nets = [_baseline_aux(model, rule, i, n, input_mean, input_std) for i in range(n)]
    for aux in nets:
        model.init_aux(aux)
    return nets


def _baseline_aux(model: LayeredModel, rule: str, i: int, n: int, mean: tuple[float, ...],
                  std: tuple[float, ...]) -> AuxNet:
    info = model.info[i]
    if rule == "dgl":
        return DGLAux(i, info.out_channels, info.spatial, model.num_classes)
    if rule == "predsim":
        return PredSimAux(i, info.out_channels, info.spatial, model.num_classes)
    recon_weight, ce_weight = infopro_weights(model.num_layers, i, n)
    widest = max(x.out_channels for x in model.info)
    return InfoProAux(i, info.out_channels, widest, model.num_classes, mean, std, recon_weight, ce_weight)


__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "RULES", "STRATEGIES", "AugLocalAux", "AuxNet", "DGLAux", "InfoProAux",
    "PredSimAux", "build_aux_nets", "forward_macs", "num_local_layers", "pyramid_ks", "select_layers",
]

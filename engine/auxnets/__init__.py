"""Auxiliary networks of every learning rule: AugLocal (+ ablation strategies), DGL, PredSim, InfoPro."""

from __future__ import annotations

from engine.auxnets.auglocal import AugLocalAux, build_auglocal_nets
from engine.auxnets.base import AuxNet
from engine.auxnets.convwide import build_conv_nets
from engine.auxnets.dgl import DGLAux
from engine.auxnets.infopro import CIFAR10_MEAN, CIFAR10_STD, InfoProAux, infopro_weights
from engine.auxnets.macs import forward_macs
from engine.auxnets.predsim import PredSimAux
from engine.auxnets.selection import CONVENTIONS, num_local_layers, pyramid_ks, select_layers
from engine.models.base import LayeredModel

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
    if isinstance(d, bool) or not isinstance(d, int) or d < 2:
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
    """Aux nets for layers 0..n-1 of `model` (n = num_local_layers); layer n..L-1 + head train globally.

    d (paper depth, k = d - 1 selected layers) and tau (pyramid decay) matter only for 'auglocal', whose
    `strategy` picks uniform selection or an ablation (method.md 5.5). `convention` None means
    model.convention (method.md section 2). input_mean / input_std (per image channel, of the data
    normalisation) let InfoPro rebuild the raw image it reconstructs; defaults are CIFAR-10's.
    Returned aux nets are freshly initialised (model.init_aux) and in train mode.
    """
    convention = model.convention if convention is None else convention
    _check_args(model, rule, d, tau, strategy, convention)
    num_layers = model.num_layers
    n = num_local_layers(num_layers, d - 1, convention, rule)
    if rule == "bp":
        return []
    if rule == "auglocal":
        ks = pyramid_ks(d - 1, n, tau)
        if strategy in ("conv1x1", "conv3x3"):
            return list(build_conv_nets(model, ks, kernel_size=1 if strategy == "conv1x1" else 3))
        return list(build_auglocal_nets(model, ks, strategy))
    nets: list[AuxNet] = []
    for i in range(n):
        info = model.info[i]
        if rule == "dgl":
            aux: AuxNet = DGLAux(i, info.out_channels, info.spatial, model.num_classes)
        elif rule == "predsim":
            aux = PredSimAux(i, info.out_channels, info.spatial, model.num_classes)
        else:
            recon_weight, ce_weight = infopro_weights(num_layers, i, n)
            widest = max(x.out_channels for x in model.info)
            aux = InfoProAux(i, info.out_channels, widest, model.num_classes, input_mean, input_std,
                             recon_weight, ce_weight)
        model.init_aux(aux)
        nets.append(aux)
    return nets


__all__ = [
    "RULES", "STRATEGIES", "AugLocalAux", "AuxNet", "DGLAux", "InfoProAux", "PredSimAux", "build_aux_nets",
    "forward_macs", "num_local_layers", "pyramid_ks", "select_layers",
]

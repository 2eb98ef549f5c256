"""Static costs of a model under a learning rule: parameters and forward MACs per local layer and aux net."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine.models.base import LayeredModel

#: batch used for counting: BatchNorm1d and batch-wise losses misbehave at batch 1; results are per image
COUNT_BATCH = 2


@dataclass
class LayerCost:
    """Size and forward cost of one local layer and of its aux net (none for layers of the global top group).

    MACs are forward multiply-accumulates per image at the model's input size (the paper's "FLOPs",
    method.md 3.8), counted by torch's FlopCounterMode: conv and linear (and any matmul a loss does).
    """

    index: int
    width: int
    out_channels: int
    spatial: int
    selected: list[int] = field(default_factory=list)
    notation: str = ""
    primary_params: int = 0
    aux_params: int = 0
    primary_macs: int = 0
    aux_macs: int = 0
    top: bool = False


@dataclass
class HeadCost:
    """The classifier head of the primary network: part of the top group, trained by the global loss."""

    params: int
    macs: int


@dataclass
class CostTotals:
    """Sums over a whole model; `primary_*` include the head."""

    primary_macs: int
    aux_macs: int
    primary_params: int
    aux_params: int

    @property
    def total_macs(self) -> int:
        return self.primary_macs + self.aux_macs

    @property
    def total_params(self) -> int:
        return self.primary_params + self.aux_params


def num_params(module: nn.Module | None) -> int:
    """Parameter count of a module (0 for None)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _twin(modules: Sequence[nn.Module], meta: bool) -> nn.ModuleList:
    """An eval-mode copy of `modules` to count on, so the caller's modules keep their train/eval flags.

    With `meta` every parameter and buffer becomes a data-free meta tensor: FlopCounterMode needs only
    shapes, so counting costs no arithmetic and no memory. Otherwise the copy shares the real tensors
    (nothing is written under no_grad in eval mode).
    """
    memo: dict[int, object] = {}
    for module in modules:
        for t in itertools.chain(module.parameters(), module.buffers()):
            if meta:
                empty = torch.empty_like(t, device="meta")
                memo[id(t)] = nn.Parameter(empty, t.requires_grad) if isinstance(t, nn.Parameter) else empty
            else:
                memo[id(t)] = t
    return copy.deepcopy(nn.ModuleList(modules), memo).eval()


def _counted(fn: Callable[[], Any], batch: int) -> tuple[int, Any]:
    """Run `fn()` under FlopCounterMode: (forward MACs per image, what fn returned); FLOPs = 2 x MACs."""
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            result = fn()
    except (NotImplementedError, RuntimeError) as e:
        if "meta" not in str(e).lower():
            raise
        raise RuntimeError(f"a module cannot run on the meta device ({e}); count on its real device "
                           "instead by passing meta=False") from e
    return round(counter.get_total_flops() / (2 * batch)), result


def count_macs(fn: Callable[[], Any], batch: int) -> int:
    """Forward MACs per image of `fn()` run on a batch of `batch` (torch counts FLOPs = 2 x MACs)."""
    return _counted(fn, batch)[0]


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _dummy_batch(model: LayeredModel, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(COUNT_BATCH, 3, model.input_size, model.input_size, device=device)
    y = (torch.arange(COUNT_BATCH) % model.num_classes).to(device)
    return x, y


def _check_aux_nets(model: LayeredModel, aux_nets: Sequence[nn.Module]) -> None:
    if len(aux_nets) >= model.num_layers:
        raise ValueError(f"{len(aux_nets)} aux nets for a model of {model.num_layers} local layers; at most "
                         f"{model.num_layers - 1} (the last layer is always trained by the global loss)")
    for i, aux in enumerate(aux_nets):
        attached = getattr(aux, "layer", i)
        if attached != i:
            raise ValueError(f"aux net {i} is attached to layer {attached}; expected layer {i} "
                             "(pass the list build_aux_nets returns, in layer order)")


def layer_costs(model: LayeredModel, aux_nets: Sequence[nn.Module], meta: bool = True) -> list[LayerCost]:
    """Parameters and per-image forward MACs of every local layer and of the aux net attached to it.

    Aux net i belongs to layer i (as in `build_local_modules`); layers from len(aux_nets) on form the
    global top group and get no aux net. The primary forward runs layer by layer on a dummy input of the
    model's input size, and each aux net runs on its layer's output, so every count is of the real
    modules, not of a formula. Counting runs on an eval-mode copy (on the meta device unless `meta` is
    False), so the caller's modules are left exactly as they were.
    """
    _check_aux_nets(model, aux_nets)
    twin = _twin([model, *aux_nets], meta)
    twin_model, twin_aux = twin[0], list(twin[1:])
    x, y = _dummy_batch(model, torch.device("meta") if meta else _device_of(model))
    costs: list[LayerCost] = []
    h = x
    for i, (layer, info) in enumerate(zip(twin_model.layers, model.info, strict=True)):
        primary, h = _counted(lambda layer=layer, inp=h: layer(inp), COUNT_BATCH)
        cost = LayerCost(index=i, width=info.width, out_channels=info.out_channels, spatial=info.spatial,
                         primary_params=num_params(layer), primary_macs=primary, top=i >= len(aux_nets))
        if i < len(aux_nets):
            aux = twin_aux[i]
            xin = x if getattr(aux, "needs_input", False) else None
            cost.aux_macs = count_macs(lambda aux=aux, out=h, xin=xin: aux(out, y, xin), COUNT_BATCH)
            cost.aux_params = num_params(aux)
            cost.selected = [int(j) for j in getattr(aux, "selected", [])]
            cost.notation = str(getattr(aux, "notation", type(aux).__name__))
        costs.append(cost)
    return costs


def head_cost(model: LayeredModel, meta: bool = True) -> HeadCost:
    """Parameters and per-image forward MACs of the classifier head, on the last layer's output."""
    twin_model = _twin([model], meta)[0]
    h, _ = _dummy_batch(model, torch.device("meta") if meta else _device_of(model))
    with torch.no_grad():
        for layer in twin_model.layers:
            h = layer(h)
    return HeadCost(params=num_params(model.head), macs=count_macs(lambda: twin_model.head(h), COUNT_BATCH))


def layer_output_shapes(model: LayeredModel) -> list[tuple[int, ...]]:
    """Each local layer's output shape for one image (no batch dim), from a forward on the meta device."""
    twin_model = _twin([model], meta=True)[0]
    h, _ = _dummy_batch(model, torch.device("meta"))
    shapes = []
    with torch.no_grad():
        for layer in twin_model.layers:
            h = layer(h)
            shapes.append(tuple(int(d) for d in h.shape[1:]))
    return shapes


def cost_totals(costs: Sequence[LayerCost], head: HeadCost) -> CostTotals:
    """Totals of a dry run: primary network (layers + head) and all aux nets."""
    return CostTotals(
        primary_macs=sum(c.primary_macs for c in costs) + head.macs,
        aux_macs=sum(c.aux_macs for c in costs),
        primary_params=sum(c.primary_params for c in costs) + head.params,
        aux_params=sum(c.aux_params for c in costs),
    )


def module_costs_flops(modules: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor | None = None,
                       meta: bool = True) -> list[float]:
    """Training-work proxy per local module and image: 3 x (primary + aux forward MACs).

    Backward costs about twice the forward, hence the 3. `x` is a sample input batch (any batch size; the
    result is per image; only its shape matters when `meta`) and `y` its labels (zeros when omitted).
    Modules run in order, each on the previous module's output, exactly as a Stage chains them, on an
    eval-mode copy as in `layer_costs`.
    """
    if not modules:
        raise ValueError("no local modules to cost; pass the list build_local_modules returns")
    batch = int(x.shape[0])
    if batch < 1:
        raise ValueError("the sample batch x is empty; pass at least one input")
    device = torch.device("meta") if meta else x.device
    x = x.to(device)
    y = torch.zeros(batch, dtype=torch.long, device=device) if y is None else y.to(device)
    out: list[float] = []
    h = x
    for m in _twin(list(modules), meta):
        primary, h = _counted(lambda m=m, inp=h: m(inp), batch)
        aux = getattr(m, "aux", None)
        aux_macs = 0
        if aux is not None:
            xin = x if getattr(aux, "needs_input", False) else None
            aux_macs = count_macs(lambda aux=aux, out=h, xin=xin: aux(out, y, xin), batch)
        out.append(3.0 * (primary + aux_macs))
    return out

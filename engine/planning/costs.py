"""Static costs of a model under a learning rule: parameters and forward MACs per local layer and aux net."""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from auglocal.engine.local_module import LocalModule
from auglocal.engine.models.base import LayeredModel
from auglocal.engine.planning import mac_cache
from auglocal.engine.planning.mac_conventions import ENGINE, attention_formulas, flop_formulas
from torch import nn

#: batch used for counting: BatchNorm1d and batch-wise losses misbehave at batch 1; results are per image
COUNT_BATCH = 2


@dataclass
class LayerCost:
    """Size and forward cost of one local layer and of its aux net (none for layers of the global top group).

    MACs are forward multiply-accumulates per image at the model's input size (the paper's "FLOPs",
    docs/method.md 3.8), counted by torch's FlopCounterMode: conv and linear (and any matmul a loss does), or
    under the paper's convention as fvcore counts them (mac_conventions.py).
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


def _counted(fn: Callable[[], Any], batch: int, macs: str = ENGINE) -> tuple[int, Any]:
    """Run `fn()` under FlopCounterMode: (forward MACs per image, what fn returned); FLOPs = 2 x MACs. `macs` is the
    counting convention (mac_conventions.py)."""
    from torch.utils.flop_counter import FlopCounterMode  # 0.3 s to import: a dry run with cached counts skips it

    # eval mode under no_grad sends nn.MultiheadAttention on real CPU/CUDA tensors down its fused fast path, an
    # operator FlopCounterMode has no formula for (a ViT block would count its MLP only): count the plain path
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        mapping = {**attention_formulas(), **flop_formulas(macs)}
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            result = fn()
    except (NotImplementedError, RuntimeError) as e:
        if "meta" not in str(e).lower():
            raise
        raise RuntimeError(f"a module cannot run on the meta device ({e}); count on its real device "
                           "instead by passing meta=False") from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return round(counter.get_total_flops() / (2 * batch)), result


def count_macs(fn: Callable[[], Any], batch: int) -> int:
    """Forward MACs per image of `fn()` run on a batch of `batch` (torch counts FLOPs = 2 x MACs)."""
    return _counted(fn, batch)[0]


#: "type|architecture|argument shapes|batch" -> (MACs per image, output shape or None); see _counted_call.
#: Filled from the user's cache (mac_cache.py) on first use; counts not yet written there are in _UNSAVED.
_MEMO: dict[str, mac_cache.Count] = {}
_UNSAVED: dict[str, mac_cache.Count] = {}
_LOADED = False
#: the keys of _MEMO that came from the user's cache file, not from counting in this process
_FROM_FILE: set[str] = set()


def _shape(arg: Any) -> tuple | None:
    return (tuple(arg.shape), str(arg.dtype)) if isinstance(arg, torch.Tensor) else None


def _architecture(module: nn.Module) -> str:
    """What decides a module's forward FLOPs: its repr, less an aux net's layer index (which costs nothing)."""
    from auglocal.engine.auxnets.base import AuxNet

    if isinstance(module, AuxNet):
        return repr(module).replace(f"layer={module.layer}, ", "", 1)
    return repr(module)


def _memo_key(module: nn.Module, args: tuple, batch: int, macs: str = ENGINE, method: str = "forward") -> str:
    """The engine's counts of `forward` keep the key they had before conventions existed (so do the cached ones)."""
    from auglocal.engine.models.imports import code_fingerprint

    cls = type(module)
    what = "" if (macs, method) == (ENGINE, "forward") else f"{macs}.{method}|"
    code = code_fingerprint({type(m) for m in module.modules()})     # None for the engine's and torch's blocks
    tail = "" if code is None else f"|code={code}"
    return (f"{what}{cls.__module__}.{cls.__qualname__}|{_architecture(module)}|{[_shape(a) for a in args]}|{batch}"
            f"{tail}")


def _remembered(key: str) -> mac_cache.Count | None:
    global _LOADED
    if not _LOADED:
        loaded = mac_cache.MacCache().load()
        _MEMO.update(loaded)
        _FROM_FILE.update(loaded)
        _LOADED = True
    return _MEMO.get(key)


def _save_new_counts() -> None:
    """Write the counts made since the last save to the user's cache: the next process need not count them."""
    if _UNSAVED:
        mac_cache.MacCache().add(_UNSAVED)
        _UNSAVED.clear()


def _recounted_if_the_cache_misled(count: Callable) -> Callable:
    """Run `count`; if a block fails on an output shape read from the cache file, count again without the file.

    mac_cache checks each cached count's types and ranges, but a plausible shape can still be the wrong one
    for its block (a hand-edited file with a valid digest): the next block then cannot run on it. That is a
    cache miss, not an error of the run: one warning line (naming the file), the file's counts forgotten, the
    file emptied, and everything counted afresh.
    """
    @functools.wraps(count)
    def counted(*args, **kwargs):
        try:
            return count(*args, **kwargs)
        except RuntimeError as err:
            if not _FROM_FILE:
                raise
            cache = mac_cache.MacCache()
            cache.forget(f"its output shapes do not fit the network: {str(err).splitlines()[0][:80]}")
            for key in _FROM_FILE:
                _MEMO.pop(key, None)
            _FROM_FILE.clear()
            return count(*args, **kwargs)
    return counted


def _counted_call(module: nn.Module, args: tuple, batch: int, meta: bool, macs: str = ENGINE,
                  method: str = "forward") -> tuple[int, Any]:
    """MACs per image of `module(*args)` (or of `module.<method>(*args)`) and its output, counted under the
    convention `macs`, run on an eval-mode twin (see `_twin`).

    On the meta device the count is remembered by the module's architecture and the argument shapes, in this
    process and (through mac_cache.py) for later ones. Deep networks repeat the same block many times
    (ResNet-110: 18 identical blocks per stage; aux nets of equal depth within a stage), and counting on the
    meta device is slow (every op goes through torch's Python meta kernels and decompositions, and the first
    one imports torch._dynamo): a dry run of ResNet-110 spent most of its time counting. On the meta device
    FLOPs depend only on the architecture (its repr: types, channels, strides, kernel and pool sizes) and the
    input shapes, so a remembered block is not run: its output is a fresh meta tensor of the remembered
    shape; only a block counted for the first time is copied. Off the meta device everything runs.
    """
    key = None
    if meta:
        key = _memo_key(module, args, batch, macs, method)
        known = _remembered(key)
        if known is not None:
            count, out_shape = known
            return count, None if out_shape is None else torch.empty(out_shape, device="meta")
    twin = _twin([module], meta)[0]
    call = twin if method == "forward" else getattr(twin, method)
    count, out = _counted(lambda: call(*args), batch, macs)
    if key is not None and (out is None or (isinstance(out, torch.Tensor) and out.dtype == torch.float32)):
        _MEMO[key] = _UNSAVED[key] = (count, None if out is None else tuple(out.shape))
    return count, out


def _check_aux_nets(model: LayeredModel, aux_nets: Sequence[nn.Module]) -> None:
    if len(aux_nets) >= model.num_layers:
        raise ValueError(f"{len(aux_nets)} aux nets for a model of {model.num_layers} local layers; at most "
                         f"{model.num_layers - 1} (the last layer is always trained by the global loss)")
    for i, aux in enumerate(aux_nets):
        attached = getattr(aux, "layer", i)
        if attached != i:
            raise ValueError(f"aux net {i} is attached to layer {attached}; expected layer {i} "
                             "(pass the list build_aux_nets returns, in layer order)")


def _device_of(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _dummy_batch(model: LayeredModel, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(COUNT_BATCH, 3, model.input_size, model.input_size, device=device)
    y = (torch.arange(COUNT_BATCH) % model.num_classes).to(device)
    return x, y


@_recounted_if_the_cache_misled
def layer_costs(model: LayeredModel, aux_nets: Sequence[nn.Module], meta: bool = True,
                macs: str = ENGINE) -> list[LayerCost]:
    """Parameters and per-image forward MACs of every local layer and of the aux net attached to it.

    Aux net i belongs to layer i (as in `build_local_modules`); layers from len(aux_nets) on form the
    global top group and get no aux net. The primary forward runs layer by layer on a dummy input of the
    model's input size, and each aux net runs on its layer's output, so every count is of the real
    modules, not of a formula. Counting runs on eval-mode copies (on the meta device unless `meta` is
    False), so the caller's modules are left exactly as they were. `macs` is the counting convention
    (mac_conventions.py): under the paper's an aux net counts its classifier path, `logits(h)`, only.
    """
    _check_aux_nets(model, aux_nets)
    x, y = _dummy_batch(model, torch.device("meta") if meta else _device_of(model))
    costs: list[LayerCost] = []
    h = x
    for i, (layer, info) in enumerate(zip(model.layers, model.info, strict=True)):
        primary, h = _counted_call(layer, (h,), COUNT_BATCH, meta, macs)
        cost = LayerCost(index=i, width=info.width, out_channels=info.out_channels, spatial=info.spatial,
                         primary_params=num_params(layer), primary_macs=primary, top=i >= len(aux_nets))
        if i < len(aux_nets):
            aux = aux_nets[i]
            if macs == ENGINE:
                xin = x if getattr(aux, "needs_input", False) else None
                cost.aux_macs = _counted_call(aux, (h, y, xin), COUNT_BATCH, meta)[0]
            else:
                cost.aux_macs = _counted_call(aux, (h,), COUNT_BATCH, meta, macs, method="logits")[0]
            cost.aux_params = num_params(aux)
            cost.selected = [int(j) for j in getattr(aux, "selected", [])]
            cost.notation = str(getattr(aux, "notation", type(aux).__name__))
        costs.append(cost)
    _save_new_counts()
    return costs


@_recounted_if_the_cache_misled
def head_cost(model: LayeredModel, meta: bool = True, macs: str = ENGINE) -> HeadCost:
    """Parameters and per-image forward MACs of the classifier head, on the last layer's output, counted under
    the convention `macs`."""
    h, _ = _dummy_batch(model, torch.device("meta") if meta else _device_of(model))
    for layer in model.layers:
        h = _counted_call(layer, (h,), COUNT_BATCH, meta)[1]
    head = HeadCost(params=num_params(model.head), macs=_counted_call(model.head, (h,), COUNT_BATCH, meta, macs)[0])
    _save_new_counts()
    return head


@_recounted_if_the_cache_misled
def layer_output_shapes(model: LayeredModel) -> list[tuple[int, ...]]:
    """Each local layer's output shape for one image (no batch dim), from a forward on the meta device (the
    layers `layer_costs` counted already are not run again: see `_counted_call`)."""
    h, _ = _dummy_batch(model, torch.device("meta"))
    shapes = []
    for layer in model.layers:
        h = _counted_call(layer, (h,), COUNT_BATCH, meta=True)[1]
        shapes.append(tuple(int(d) for d in h.shape[1:]))
    _save_new_counts()
    return shapes


def cost_totals(costs: Sequence[LayerCost], head: HeadCost) -> CostTotals:
    """Totals of a dry run: primary network (layers + head) and all aux nets."""
    return CostTotals(
        primary_macs=sum(c.primary_macs for c in costs) + head.macs,
        aux_macs=sum(c.aux_macs for c in costs),
        primary_params=sum(c.primary_params for c in costs) + head.params,
        aux_params=sum(c.aux_params for c in costs),
    )


@dataclass(frozen=True)
class ModuleMacs:
    """One local module's forward MACs per image (primary layers + head, and its aux net) and output size."""

    primary: int
    aux: int
    out_bytes_per_image: int

    @property
    def training_work(self) -> float:
        """Backward costs about twice the forward, hence 3 x the forward MACs."""
        return 3.0 * (self.primary + self.aux)

    @property
    def forward_share(self) -> float:
        """The share of the module's training work that is the primary forward (what the next worker waits
        for)."""
        return self.primary / self.training_work if self.primary + self.aux else 0.0


@_recounted_if_the_cache_misled
def module_macs(modules: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor | None = None,
                meta: bool = True) -> list[ModuleMacs]:
    """Forward MACs per image of every local module, its aux net's, and its output bytes per image.

    `x` is a sample input batch (any batch size; the result is per image; only its shape matters when `meta`)
    and `y` its labels (zeros when omitted). Modules run in order, each on the previous module's output,
    exactly as a Stage chains them, on an eval-mode copy as in `layer_costs`.
    """
    if not modules:
        raise ValueError("no local modules to cost; pass the list build_local_modules returns")
    batch = int(x.shape[0])
    if batch < 1:
        raise ValueError("the sample batch x is empty; pass at least one input")
    device = torch.device("meta") if meta else x.device
    x = x.to(device)
    y = torch.zeros(batch, dtype=torch.long, device=device) if y is None else y.to(device)
    out: list[ModuleMacs] = []
    h = x
    for m in modules:
        # a local module's forward is its layers, then its head (top module): counted part by part, so the
        # blocks repeated across modules are counted once (MACs per image are whole numbers: the sum is exact)
        parts = [*m.layers, *([m.head] if m.head is not None else [])] if isinstance(m, LocalModule) else [m]
        primary = 0
        for part in parts:
            macs, h = _counted_call(part, (h,), batch, meta)
            primary += macs
        aux = getattr(m, "aux", None)
        aux_macs = 0
        if aux is not None:
            xin = x if getattr(aux, "needs_input", False) else None
            aux_macs = _counted_call(aux, (h, y, xin), batch, meta)[0]
        out.append(ModuleMacs(primary, aux_macs, h.numel() * h.element_size() // batch))
    _save_new_counts()
    return out


def module_costs_flops(modules: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor | None = None,
                       meta: bool = True) -> list[float]:
    """Training-work proxy per local module and image: 3 x (primary + aux forward MACs); see `module_macs`."""
    return [m.training_work for m in module_macs(modules, x, y, meta)]

"""R x K layouts: R replicas of a K-worker pipeline, each on a shard of B/R images, and the best one for N devices.

The model, as the runtime runs it (issue 27): every replica's worker r runs stage r on its shard; after each
local module's backward, that module's gradients are all-reduced among the R replicas of its stage, then
every replica steps. Only replicas of one stage talk, so stages never wait on one another's reductions: a
stage's reduction lengthens that stage's own step only. Hence the step of a layout is the pipeline's (the
simulator's replay, engine/planning/simulator.py) with module times at the shard batch and each module's
reduction added after its backward, and a layout's images/s = B / that step.

Two assumptions, stated wherever a figure is shown. Module time is proportional to the batch (a GPU at a
small shard is less efficient than this says, a CPU about as efficient). And, with `overlap` (the default:
what the runtime does, workers/runtime/grad_reducer.py), a module's all-reduce starts after its backward
and runs beside the stage's later modules, and the stage's one optimizer step waits for all of them: the
worker waits for its last module's reduction, and for the stage's reductions in all when they outlast its
compute (one process group per stage, so they run one after another). Without it, a blocking all_reduce
after each module's backward puts every reduction on the worker's critical path. The runtime also
broadcasts replica 0's batch-norm buffers per module; those bytes (two floats per channel) are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from auglocal.engine.planning.partition import partition
from auglocal.engine.planning.plan import format_ids, format_rate
from auglocal.engine.planning.simulator import Event, LinkCost, ModuleTime, simulate, worker_loads

FREE_LINK = LinkCost()


@dataclass(frozen=True)
class Network:
    """What a layout's prediction needs of the network, per local module, at the global batch `batch`.

    `times`: seconds per batch of `batch` images (primary forward and the rest); `param_bytes`: the bytes of
    the module's trainable parameters (layers, aux net, head), in their gradients' dtype: what its all-reduce
    moves; `out_bytes`: activation bytes per image it sends downstream; `params`: its parameter count."""

    times: Sequence[ModuleTime]
    param_bytes: Sequence[int]
    out_bytes: Sequence[int]
    batch: int
    layer_ids: Sequence[Sequence[int]] = ()
    params: Sequence[int] = ()

    def __post_init__(self) -> None:
        n = len(self.times)
        if n == 0 or len(self.param_bytes) != n or len(self.out_bytes) != n:
            raise ValueError(f"give one time, parameter size and output size per module, got {len(self.times)}, "
                             f"{len(self.param_bytes)}, {len(self.out_bytes)}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")


@dataclass
class Layout:
    """One R x K layout and what it predicts (seconds per global step, images/s of the whole layout)."""

    replicas: int
    groups: list[list[int]]
    shard_batch: float
    stage_param_bytes: list[int]
    stage_reduce_s: list[float]
    stage_compute_s: list[float]
    images_per_s: float
    layer_ids: list[list[int]] = field(default_factory=list)
    stage_params: list[int] = field(default_factory=list)

    @property
    def k(self) -> int:
        return len(self.groups)

    @property
    def devices(self) -> int:
        return self.replicas * self.k

    @property
    def name(self) -> str:
        return f"{self.replicas} x {self.k}"

    @property
    def step_s(self) -> float:
        return self.shard_batch * self.replicas / self.images_per_s


def module_reduce_s(net: Network, replicas: int, reduce) -> list[float]:
    """Each module's all-reduce seconds among `replicas` (one call per module, as the runtime does)."""
    return [reduce.seconds(int(b), replicas) for b in net.param_bytes]


def simulate_layout(net: Network, groups: Sequence[Sequence[int]], replicas: int, reduce, events: Sequence[Event],
                    link: LinkCost = FREE_LINK, cores: float | None = None, overlap: bool = True,
                    window: int = 2) -> Layout:
    """Predict `replicas` copies of the pipeline `groups` (see the module docstring). `cores`: CPU cores all
    R x K processes share (None: a device each); each replica's pipeline then gets cores / R of them."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    scale = 1.0 / replicas
    shard = net.batch / replicas
    red = module_reduce_s(net, replicas, reduce)
    last_of = {g[-1] for g in groups}
    times = []
    for i, t in enumerate(net.times):
        on_path = red[i] if (not overlap or i in last_of) else 0.0
        times.append(ModuleTime(t.forward_s * scale, t.rest_s * scale + on_path))
    loads = worker_loads(groups, times, [b * shard for b in net.out_bytes])
    share = 1.0
    per_replica = None
    if cores is not None:
        per_replica = cores / replicas
        if per_replica < 1:            # fewer cores than replicas: each replica runs at that fraction of one core
            share, per_replica = per_replica, 1
    sim = simulate(events, loads, net.batch, link, window=window, cores=per_replica)
    rate = sim.images_per_s * share
    compute = [sum(net.times[i].total_s * scale for i in g) for g in groups]
    stage_red = [sum(red[i] for i in g) for g in groups]
    if overlap:   # the stage's reductions run one after another beside its compute: they bound its step too
        for c, r in zip(compute, stage_red, strict=True):
            rate = min(rate, net.batch / max(c, r)) if max(c, r) > 0 else rate
    return Layout(replicas=replicas, groups=[list(g) for g in groups], shard_batch=shard,
                  stage_param_bytes=[sum(int(net.param_bytes[i]) for i in g) for g in groups],
                  stage_reduce_s=stage_red, stage_compute_s=compute, images_per_s=rate,
                  layer_ids=[[j for i in g for j in net.layer_ids[i]] for g in groups] if net.layer_ids else [],
                  stage_params=[sum(net.params[i] for i in g) for g in groups] if net.params else [])


@dataclass
class LayoutChoice:
    best: Layout
    candidates: list[Layout]


def best_layout(devices: int, net: Network, reduce, events: Sequence[Event], link: LinkCost = FREE_LINK,
                cores: float | None = None, overlap: bool = True, replicas: Sequence[int] | None = None,
                ks: Sequence[int] | None = None) -> LayoutChoice:
    """The R x K layout (R x K <= `devices`, K <= the modules, R <= the batch) with the most predicted images/s,
    and every candidate tried, best first. Ties go to fewer devices, then to fewer replicas (less traffic).
    `replicas` / `ks`: only these R / K (e.g. R fixed by --replicas R, K by --workers K)."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    n = len(net.times)
    costs = [t.total_s for t in net.times]
    k_values = [k for k in (ks or range(1, n + 1)) if 1 <= k <= min(n, devices)]
    candidates = []
    for k in k_values:
        groups = partition(costs, k)
        for r in (replicas or range(1, devices // k + 1)):
            if 1 <= r <= min(devices // k, net.batch):
                candidates.append(simulate_layout(net, groups, r, reduce, events, link, cores, overlap))
    if not candidates:
        raise ValueError(f"no layout of R x K <= {devices} devices with R in {replicas} and K in {ks}")
    candidates.sort(key=lambda lay: (-round(lay.images_per_s, 9), lay.devices, lay.replicas))
    return LayoutChoice(candidates[0], candidates)


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def format_layout(layout: Layout, label: str = "") -> str:
    """Per stage of one layout: modules, layers, parameters (layers + aux nets), the bytes and seconds of their
    all-reduce, and the stage's compute at the shard batch."""
    lines = [f"replicas x workers {layout.name} (R x K = {layout.devices} devices), shard batch "
             f"{layout.shard_batch:g}" + (f"; {label}" if label else ""),
             f"{'stage':>5}  {'modules':<9} {'layers':<10} {'params':>10} {'reduce bytes':>12} "
             f"{'reduce ms':>9} {'compute ms':>10}"]
    for s, g in enumerate(layout.groups):
        ids = format_ids(layout.layer_ids[s]) if layout.layer_ids else ""
        params = f"{layout.stage_params[s]:,}" if layout.stage_params else ""
        lines.append(f"{s:>5}  {format_ids(g):<9} {ids:<10} {params:>10} "
                     f"{_bytes(layout.stage_param_bytes[s]):>12} {layout.stage_reduce_s[s] * 1e3:>9.3f} "
                     f"{layout.stage_compute_s[s] * 1e3:>10.3f}")
    lines.append(f"predicted step {layout.step_s * 1e3:.3f} ms per global batch: "
                 f"{format_rate(layout.images_per_s)} images/s")
    return "\n".join(lines)


def format_candidates(choice: LayoutChoice, top: int = 12) -> str:
    """The candidates table, best first (at most `top` rows; the rest counted)."""
    best = choice.best.images_per_s
    lines = [f"{'R x K':>8} {'devices':>7} {'shard':>7} {'max reduce ms':>13} {'step ms':>9} {'images/s':>10} "
             f"{'vs best':>7}"]
    for lay in choice.candidates[:top]:
        lines.append(f"{lay.name:>8} {lay.devices:>7} {lay.shard_batch:>7g} {max(lay.stage_reduce_s) * 1e3:>13.3f} "
                     f"{lay.step_s * 1e3:>9.3f} {format_rate(lay.images_per_s):>10} "
                     f"{lay.images_per_s / best:>7.2f}")
    if len(choice.candidates) > top:
        lines.append(f"... {len(choice.candidates) - top} more layouts, all slower")
    return "\n".join(lines)


def param_bytes(module) -> int:
    """Bytes of a module's trainable parameters, which is what its gradients' all-reduce moves."""
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)


def network_of(modules, x, costs: Sequence[float], unit: str, batch: int, macs_per_s: float | None = None) -> Network:
    """A Network from local modules and a plan's costs: seconds per batch (unit 's'), or MACs per image turned
    into seconds at `macs_per_s` (an assumed rate: the caller labels it). Each cost is split into the primary
    forward and the rest by MACs (simulator.forward_shares), as the dry run's simulation does."""
    from auglocal.engine.planning.simulator import forward_shares

    if unit != "s" and not macs_per_s:
        raise ValueError(f"costs in {unit!r} need a MAC rate to become seconds")
    shares, out_bytes = forward_shares(modules, x)
    seconds = [c if unit == "s" else c * batch / macs_per_s for c in costs]
    return Network(times=[ModuleTime(s * f, s * (1 - f)) for s, f in zip(seconds, shares, strict=True)],
                   param_bytes=[param_bytes(m) for m in modules], out_bytes=list(out_bytes), batch=batch,
                   layer_ids=[list(m.layer_ids) for m in modules],
                   params=[sum(p.numel() for p in m.parameters() if p.requires_grad) for m in modules])

"""A pipeline plan: which local modules each worker runs, and the throughput that split should reach."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from auglocal.engine.local_module import LocalModule
from auglocal.engine.planning.partition import partition

SECONDS = "s"


def format_ids(ids: Sequence[int]) -> str:
    """'3-7' for a contiguous run of ids, else a comma list."""
    ids = list(ids)
    if len(ids) > 1 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}"
    return ",".join(str(i) for i in ids)


@dataclass
class PipelinePlan:
    """Plain data: the partition of local modules onto workers and what it predicts.

    `module_costs[i]` is the cost of module i per batch of `batch_size` images, in `unit`: seconds ("s",
    from `module_costs_timed`) or a work proxy such as "MAC" (from `module_costs_flops`, per image), in which
    case balance and speedup are still meaningful but no images/s can be predicted. In steady state the
    slowest worker sets the pace, so predicted images/s = batch_size / max group time. `transport_s` is the
    time a worker spends per message on its outgoing link (serialising and sending the activations); it is
    charged to every worker except the last, which only reports metrics. The sequential prediction runs all
    modules one after another in one process: batch_size / sum of all module costs, no transport.
    `source` says where the costs came from (FLOPs, measured now, or measured earlier and cached).
    """

    groups: list[list[int]]
    layer_ids: list[list[int]]
    module_costs: list[float]
    batch_size: int
    unit: str = SECONDS
    transport_s: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.module_costs)
        flat = [i for g in self.groups for i in g]
        if not self.groups or any(not g for g in self.groups) or flat != list(range(n)):
            raise ValueError(f"groups {self.groups} must be non-empty, contiguous and cover modules "
                             f"0..{n - 1} in order")
        if len(self.layer_ids) != len(self.groups):
            raise ValueError(f"{len(self.layer_ids)} layer-id lists for {len(self.groups)} groups; "
                             "give one list per group")
        if any(not math.isfinite(c) or c < 0 for c in self.module_costs) or sum(self.module_costs) <= 0:
            raise ValueError(f"module costs must be finite, >= 0 and not all zero, got {self.module_costs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not math.isfinite(self.transport_s) or self.transport_s < 0:
            raise ValueError(f"transport_s must be a finite number of seconds >= 0, got {self.transport_s}")
        if self.unit != SECONDS and self.transport_s:
            raise ValueError(f"transport_s is in seconds but the costs are in {self.unit!r}; "
                             "time the modules (unit 's') to include transport")

    @property
    def k(self) -> int:
        """Number of workers."""
        return len(self.groups)

    @property
    def group_costs(self) -> list[float]:
        """Compute cost of each worker per batch (no transport)."""
        return [sum(self.module_costs[i] for i in g) for g in self.groups]

    @property
    def group_times(self) -> list[float]:
        """Busy time of each worker per batch: compute plus the outgoing link's transport, if any."""
        return [c + (self.transport_s if w < self.k - 1 else 0.0) for w, c in enumerate(self.group_costs)]

    @property
    def bottleneck(self) -> float:
        return max(self.group_times)

    @property
    def busy_fractions(self) -> list[float]:
        """Expected fraction of time each worker is busy: its time over the slowest worker's."""
        return [t / self.bottleneck for t in self.group_times]

    @property
    def speedup(self) -> float:
        """Sequential time over pipelined time per batch."""
        return sum(self.module_costs) / self.bottleneck

    @property
    def predicted_images_per_s(self) -> float | None:
        """Steady-state pipeline throughput; None when the costs are not in seconds."""
        return self.batch_size / self.bottleneck if self.unit == SECONDS else None

    @property
    def sequential_images_per_s(self) -> float | None:
        """Throughput of one process running every module in turn; None when the costs are not in seconds."""
        return self.batch_size / sum(self.module_costs) if self.unit == SECONDS else None

    def to_dict(self) -> dict:
        """JSON-ready plain data (lists, numbers, strings)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PipelinePlan:
        """Rebuild a plan saved with `to_dict`; unknown or missing keys are an error, not a silent default."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.name not in ("unit", "transport_s", "source")}
        unknown, missing = set(data) - names, required - set(data)
        if unknown or missing:
            raise ValueError(f"not a pipeline plan: unknown keys {sorted(unknown)}, missing keys "
                             f"{sorted(missing)}; expected the keys of PipelinePlan.to_dict()")
        return cls(groups=[[int(i) for i in g] for g in data["groups"]],
                   layer_ids=[[int(i) for i in g] for g in data["layer_ids"]],
                   module_costs=[float(c) for c in data["module_costs"]],
                   batch_size=int(data["batch_size"]), unit=str(data.get("unit", SECONDS)),
                   transport_s=float(data.get("transport_s", 0.0)), source=str(data.get("source", "")))

    def format(self) -> str:
        """The partition with each worker's time (compute + transport) and busy fraction, then throughput."""
        seconds = self.unit == SECONDS
        cost_head = "ms/batch" if seconds else f"{self.unit}"
        lines = [f"pipeline plan: {self.k} worker(s), {len(self.module_costs)} local modules, "
                 f"batch {self.batch_size}"]
        if self.source:
            lines.append(f"balanced by {self.source}")
        lines.append(f"{'worker':>6}  {'modules':<10} {'layers':<12} {cost_head:>14} {'busy':>6}")
        for w, (g, ids, cost, busy) in enumerate(zip(self.groups, self.layer_ids, self.group_times,
                                                     self.busy_fractions, strict=True)):
            shown = f"{cost * 1e3:.3f}" if seconds else f"{cost:.4g}"
            lines.append(f"{w:>6}  {format_ids(g):<10} {format_ids(ids):<12} {shown:>14} {busy:>6.0%}")
        if seconds:
            if self.k > 1 and self.transport_s:
                lines.append(f"worker times include {self.transport_s * 1e3:.3f} ms per message sent "
                             "downstream (all workers but the last)")
            lines.append(f"bottleneck {self.bottleneck * 1e3:.3f} ms/batch: predicted "
                         f"{format_rate(self.predicted_images_per_s)} images/s, sequential "
                         f"{format_rate(self.sequential_images_per_s)} images/s, speedup {self.speedup:.2f}x")
        else:
            lines.append(f"bottleneck {self.bottleneck:.4g} {self.unit}, speedup over one worker "
                         f"{self.speedup:.2f}x (costs are not in seconds: no images/s predicted)")
        return "\n".join(lines)


def format_rate(value: float) -> str:
    """A rate with the digits that carry information: one decimal from 1 up ("1,234.5", as before), three
    significant figures below ("0.00123", "4.56e-07"), so that a merely slow prediction never reads "0.0"."""
    if value == 0 or not math.isfinite(value) or abs(value) >= 1:
        return f"{value:,.1f}"
    return f"{value:.3g}"


def make_plan(modules: Sequence[LocalModule], k: int, batch_size: int, costs: Sequence[float],
              transport_s: float = 0.0, unit: str = SECONDS, source: str = "") -> PipelinePlan:
    """Partition `modules` (in order) onto k workers by `costs` (one per module) and wrap it as a plan."""
    if len(costs) != len(modules):
        raise ValueError(f"{len(costs)} costs for {len(modules)} local modules; give one cost per module")
    groups = partition(costs, k)
    return PipelinePlan(groups=[list(g) for g in groups],
                        layer_ids=[[i for j in g for i in modules[j].layer_ids] for g in groups],
                        module_costs=[float(c) for c in costs], batch_size=batch_size, unit=unit,
                        transport_s=transport_s, source=source)

"""Planning: per-layer costs, the dry-run table, partitioning modules onto workers, predicted throughput, simulation."""

from auglocal.engine.planning.balance import BALANCES, ModuleCosts, choose_module_costs
from auglocal.engine.planning.costs import (
    CostTotals,
    HeadCost,
    LayerCost,
    cost_totals,
    count_macs,
    head_cost,
    layer_costs,
    layer_output_shapes,
    module_costs_flops,
)
from auglocal.engine.planning.partition import group_costs, partition
from auglocal.engine.planning.plan import PipelinePlan, format_ids, make_plan
from auglocal.engine.planning.replicas import Layout, LayoutChoice, Network, best_layout, simulate_layout
from auglocal.engine.planning.simulator import (
    LinkCost,
    ModuleTime,
    Simulation,
    WorkerLoad,
    run_events,
    simulate,
    worker_loads,
)
from auglocal.engine.planning.table import format_plan_table
from auglocal.engine.planning.timing import module_costs_timed
from auglocal.engine.planning.timing_cache import CostKey, MachineKey, TimingCache, cache_path

__all__ = [
    "BALANCES",
    "CostKey",
    "MachineKey",
    "ModuleCosts",
    "TimingCache",
    "best_layout",
    "cache_path",
    "choose_module_costs",
    "CostTotals",
    "HeadCost",
    "Layout",
    "LayoutChoice",
    "Network",
    "LayerCost",
    "LinkCost",
    "ModuleTime",
    "PipelinePlan",
    "Simulation",
    "WorkerLoad",
    "cost_totals",
    "count_macs",
    "format_ids",
    "format_plan_table",
    "group_costs",
    "head_cost",
    "layer_costs",
    "layer_output_shapes",
    "make_plan",
    "module_costs_flops",
    "module_costs_timed",
    "partition",
    "run_events",
    "simulate",
    "simulate_layout",
    "worker_loads",
]

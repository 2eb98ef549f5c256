"""Planning: MAC counts against the paper, the dry-run table, exact partitioning and throughput prediction."""

import copy
import itertools
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.models import build_model
from auglocal.engine.planning import (
    PipelinePlan,
    cost_totals,
    count_macs,
    format_plan_table,
    head_cost,
    layer_costs,
    make_plan,
    module_costs_flops,
    module_costs_timed,
    partition,
)
from auglocal.engine.precision import Kernels
from torch import nn

SEEN_X: list[tuple[int, tuple[int, ...]]] = []


class StandInAux(nn.Module):
    """Tiny aux net with the AuxNet call shape: 1x1 conv -> GAP -> Linear -> CE (MACs in closed form)."""

    def __init__(self, layer: int, channels: int, hidden: int, classes: int, needs_input: bool = False):
        super().__init__()
        self.layer, self.needs_input = layer, needs_input
        self.notation, self.selected = f"{hidden}C1-AP-{classes}FC", [layer + 1]
        self.conv = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, h, y, x=None):
        if self.needs_input:
            assert x is not None
            SEEN_X.append((self.layer, tuple(x.shape)))   # module-level: counting runs on a copy
        return F.cross_entropy(self.fc(self.conv(h).mean((2, 3))), y)


def stand_in_aux(model, n, hidden=8):
    return [StandInAux(i, model.info[i].out_channels, hidden, model.num_classes, needs_input=(i == 0))
            for i in range(n)]


def mac_totals(model, aux_nets):
    return cost_totals(layer_costs(model, aux_nets), head_cost(model))


# --- MACs ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,gmacs", [("resnet32", 0.069), ("resnet110", 0.253)])
def test_primary_forward_macs_match_method_md(name, gmacs):
    from auglocal.engine.auxnets import build_aux_nets

    model = build_model(name)
    totals = mac_totals(model, build_aux_nets(model, "bp"))     # BP: no aux nets, all is the top group
    assert totals.primary_macs / 1e9 == pytest.approx(gmacs, rel=0.02)
    assert totals.aux_macs == 0 and totals.aux_params == 0
    assert totals.total_macs == totals.primary_macs
    assert totals.primary_params == sum(p.numel() for p in model.parameters())
    # layer by layer + head adds up to the whole network's forward
    on_meta = copy.deepcopy(model).to("meta").eval()
    whole = count_macs(lambda: on_meta(torch.zeros(2, 3, 32, 32, device="meta")), 2)
    assert totals.primary_macs == whole


def test_layer_costs_describe_layers_aux_nets_and_top_group():
    model = build_model("resnet20", num_classes=5)
    model.train()
    aux = stand_in_aux(model, 6)
    SEEN_X.clear()
    costs = layer_costs(model, aux)
    assert [c.index for c in costs] == list(range(model.num_layers))
    for c, info in zip(costs, model.info, strict=True):
        assert (c.width, c.out_channels, c.spatial) == (info.width, info.out_channels, info.spatial)
        assert c.primary_params == sum(p.numel() for p in model.layers[c.index].parameters())
        assert c.top == (c.index >= 6)
    for c in costs[:6]:
        s = c.spatial
        assert c.aux_macs == c.out_channels * 8 * s * s + 8 * 5     # 1x1 conv at s x s, then Linear 8 -> 5
        assert c.aux_params == c.out_channels * 8 + 8 * 5 + 5
        assert c.notation == "8C1-AP-5FC" and c.selected == [c.index + 1]
    assert all(c.aux_macs == 0 and c.aux_params == 0 and c.notation == "" for c in costs[6:])
    assert costs[0].primary_macs == 3 * 16 * 9 * 32 * 32             # stem: 3x3 conv 3 -> 16 at 32x32
    assert SEEN_X == [(0, (2, 3, 32, 32))]                            # x only for needs_input
    assert model.training and all(m.training for m in model.modules())  # flags restored


def test_layer_costs_reject_too_many_or_misplaced_aux_nets():
    model = build_model("resnet20")
    with pytest.raises(ValueError, match="at most"):
        layer_costs(model, stand_in_aux(model, model.num_layers))
    aux = stand_in_aux(model, 3)
    aux[1].layer = 2
    with pytest.raises(ValueError, match="attached to layer 2"):
        layer_costs(model, aux)


@pytest.mark.parametrize("rule", ["auglocal", "dgl", "predsim", "infopro"])
def test_counting_on_meta_equals_counting_on_real_tensors(rule):
    from auglocal.engine.auxnets import build_aux_nets

    model = build_model("resnet20", num_classes=10)
    aux = build_aux_nets(model, rule, d=3, tau=0.5)
    model.train()
    meta, real = layer_costs(model, aux), layer_costs(model, aux, meta=False)
    assert meta == real and any(c.aux_macs > 0 for c in meta)
    assert head_cost(model) == head_cost(model, meta=False)
    modules = build_local_modules(model, aux)
    x = torch.randn(2, 3, 32, 32)
    assert module_costs_flops(modules, x) == module_costs_flops(modules, x, meta=False)
    assert all(m.training for m in model.modules()) and all(m.training for a in aux for m in a.modules())
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("d,paper", [(2, 0.63), (3, 0.69), (4, 0.80), (5, 0.98), (6, 1.13)])
def test_auglocal_resnet110_flops_match_paper_table7(d, paper):
    from auglocal.engine.auxnets import build_aux_nets

    model = build_model("resnet110")
    aux = build_aux_nets(model, "auglocal", d=d, tau=0.5)
    costs = layer_costs(model, aux)
    totals = cost_totals(costs, head_cost(model))
    assert totals.total_macs / 1e9 == pytest.approx(paper, rel=0.02)
    assert sum(c.top for c in costs) == d                  # docs/method.md 2A: the top d layers are global
    table = format_plan_table(model, costs)
    assert max(len(line) for line in table.splitlines()) <= 110
    assert f"= {totals.total_macs / 1e9:.3f} G" in table


def test_module_flops_proxy_is_three_times_layer_and_aux_macs():
    model = build_model("resnet20", num_classes=5)
    aux = stand_in_aux(model, 7)
    modules = build_local_modules(model, aux)
    proxy = module_costs_flops(modules, torch.zeros(3, 3, 32, 32))
    costs, head = layer_costs(model, aux), head_cost(model)
    assert len(proxy) == len(modules) == 8
    for i in range(7):
        assert proxy[i] == 3 * (costs[i].primary_macs + costs[i].aux_macs)
    assert proxy[7] == 3 * (sum(c.primary_macs for c in costs[7:]) + head.macs)


def test_module_costs_timed_measures_each_module_without_side_effects():
    model = build_model("resnet20", num_classes=5)
    modules = build_local_modules(model, stand_in_aux(model, 5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    times = module_costs_timed(modules, x, y, steps=3, warmup=1)
    assert len(times) == len(modules) and all(t > 0 for t in times)
    # the top module runs five blocks and the head, a hidden module one block: it must take longer
    assert times[-1] > max(times[1:5])
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # BN stats untouched
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="must match"):
        module_costs_timed(modules, x, y[:3])


class KernelProbe(nn.Module):
    """A one-layer local module that records the layout and autocast state it runs in (on the timed copy)."""

    layer_ids, needs_input, is_top = [0], False, True

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, h):
        SEEN_KERNELS.append((h.is_contiguous(memory_format=torch.channels_last),
                             self.conv.weight.is_contiguous(memory_format=torch.channels_last),
                             torch.is_autocast_enabled("cpu")))
        return self.conv(h)

    def loss(self, out, y, x=None):
        return out.float().mean()


SEEN_KERNELS: list = []


@pytest.mark.parametrize("kernels,seen", [(None, (True, True, False)),   # a default CPU run: channels_last
                                          (Kernels("contiguous"), (False, False, False)),
                                          (Kernels("channels_last", "bf16"), (True, True, True))])
def test_modules_are_timed_in_the_kernels_a_stage_runs_them_with(kernels, seen):
    SEEN_KERNELS.clear()
    times = module_costs_timed([KernelProbe()], torch.randn(2, 3, 8, 8), torch.zeros(2), steps=1, warmup=0,
                               kernels=kernels)
    assert len(times) == 1 and SEEN_KERNELS == [seen]


# --- dry-run table -----------------------------------------------------------------------------------------

def test_format_plan_table_lists_every_layer_and_the_totals():
    model = build_model("resnet32")
    aux = stand_in_aux(model, 12)
    costs, head = layer_costs(model, aux), head_cost(model)
    totals = cost_totals(costs, head)
    table = format_plan_table(model, costs, head, title="dry run")
    lines = table.splitlines()
    assert lines[0] == "dry run" and max(len(line) for line in lines) <= 110
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0].isdigit()}
    assert sorted(map(int, rows)) == list(range(model.num_layers))
    assert all("top: global loss" in rows[str(i)] for i in range(12, 16))
    assert not any("top: global loss" in rows[str(i)] for i in range(12))
    assert "top group (global loss): layers 12-15 + head" in table
    total_line = next(line for line in lines if line.startswith("total MACs"))
    assert f"primary {totals.primary_macs / 1e9:.3f} G" in total_line
    assert f"aux {totals.aux_macs / 1e9:.3f} G" in total_line
    assert f"= {totals.total_macs / 1e9:.3f} G" in total_line
    assert f"{totals.total_params:,}" in table
    with pytest.raises(ValueError, match="layer costs"):
        format_plan_table(model, costs[:-1], head)


def test_format_plan_table_cuts_long_notations_to_the_width():
    model = build_model("resnet20")
    aux = stand_in_aux(model, 3)
    aux[0].notation = "-".join(["64Rs2"] * 30)
    table = format_plan_table(model, layer_costs(model, aux), max_width=100)
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "64Rs2-64Rs2" in table and "~" in table


# --- partitioning -----------------------------------------------------------------------------------------

def brute_force_bottleneck(costs, k):
    n, best = len(costs), math.inf
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        best = min(best, max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds)))
    return best


def test_partition_is_optimal_against_brute_force():
    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 9)
        costs = [rng.choice([0.0, rng.uniform(0, 10), rng.randint(1, 5)]) for _ in range(n)]
        for k in range(1, min(4, n) + 1):
            groups = partition(costs, k)
            assert len(groups) == k and all(len(g) > 0 for g in groups)
            assert [i for g in groups for i in g] == list(range(n))
            got = max(sum(costs[i] for i in g) for g in groups)
            assert got == pytest.approx(brute_force_bottleneck(costs, k), abs=1e-9)


def test_partition_known_cases_and_balance():
    assert partition([1, 2, 3, 4, 5, 6, 7, 8, 9], 3) == [range(0, 5), range(5, 7), range(7, 9)]
    assert [len(g) for g in partition([1.0] * 12, 4)] == [3, 3, 3, 3]
    assert partition([5, 1, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 6)]
    assert partition([3, 1, 4], 3) == [range(0, 1), range(1, 2), range(2, 3)]
    assert partition([3, 1, 4], 1) == [range(0, 3)]


@pytest.mark.parametrize("costs,k,match", [
    ([1, 2], 0, "k must be"), ([1, 2], 3, "only 2 local modules"), ([], 1, "empty"),
    ([1, -1], 1, "finite and >= 0"), ([1, float("nan")], 1, "finite and >= 0"), ([1, 2], 1.5, "k must be"),
])
def test_partition_errors(costs, k, match):
    with pytest.raises(ValueError, match=match):
        partition(costs, k)


# --- pipeline plan ------------------------------------------------------------------------------------------

def small_modules():
    model = build_model("resnet20")
    return build_local_modules(model, stand_in_aux(model, 3))   # modules: [0], [1], [2], [3..9]+head


def test_plan_predicts_throughput_from_the_slowest_worker():
    plan = make_plan(small_modules(), 2, batch_size=32, costs=[0.1, 0.2, 0.3, 0.4])
    assert plan.groups == [[0, 1, 2], [3]] and plan.layer_ids == [[0, 1, 2], list(range(3, 10))]
    assert plan.group_costs == pytest.approx([0.6, 0.4])
    assert plan.predicted_images_per_s == pytest.approx(32 / 0.6)
    assert plan.sequential_images_per_s == pytest.approx(32 / 1.0)
    assert plan.busy_fractions == pytest.approx([1.0, 0.4 / 0.6])
    assert plan.speedup == pytest.approx(1.0 / 0.6)
    text = plan.format()
    assert f"{32 / 0.6:,.1f} images/s" in text and "67%" in text and "3-9" in text

    slow_link = make_plan(small_modules(), 2, batch_size=32, costs=[0.1, 0.2, 0.3, 0.4], transport_s=0.05)
    assert slow_link.group_times == pytest.approx([0.65, 0.4])      # the last worker sends nothing
    assert slow_link.predicted_images_per_s == pytest.approx(32 / 0.65)
    assert slow_link.sequential_images_per_s == pytest.approx(32 / 1.0)
    text = slow_link.format()
    assert "650.000" in text and "50.000 ms per message" in text
    assert max(len(line) for line in text.splitlines()) <= 110


def test_plan_in_flop_units_balances_but_predicts_no_images_per_s():
    plan = make_plan(small_modules(), 3, batch_size=8, costs=[3e6, 3e6, 3e6, 9e6], unit="MAC")
    assert plan.groups == [[0, 1], [2], [3]]
    assert plan.predicted_images_per_s is None and plan.speedup == pytest.approx(2.0)
    assert "no images/s" in plan.format()
    with pytest.raises(ValueError, match="transport_s is in seconds"):
        make_plan(small_modules(), 2, batch_size=8, costs=[1, 1, 1, 1], unit="MAC", transport_s=0.1)


def test_plan_round_trips_through_json():
    plan = make_plan(small_modules(), 3, batch_size=16, costs=[0.01, 0.03, 0.02, 0.05], transport_s=0.002)
    again = PipelinePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.format() == plan.format()
    data = plan.to_dict()
    with pytest.raises(ValueError, match="missing keys"):
        PipelinePlan.from_dict({k: v for k, v in data.items() if k != "groups"})
    with pytest.raises(ValueError, match="unknown keys"):
        PipelinePlan.from_dict({**data, "speed": 1})
    with pytest.raises(ValueError, match="contiguous"):
        PipelinePlan.from_dict({**data, "groups": [[0, 2], [1], [3]]})
    with pytest.raises(ValueError, match="one cost per module"):
        make_plan(small_modules(), 2, batch_size=16, costs=[1.0, 2.0])

"""What a plan balances: FLOPs, module times measured now, or times cached from an earlier run here."""

import json

import pytest
import torch
from auglocal.engine.config import RunConfig, build_data, build_network, resolve
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.planning import (
    CostKey,
    MachineKey,
    TimingCache,
    cache_path,
    choose_module_costs,
    layer_costs,
    make_plan,
    module_costs_flops,
    timing_cache,
)
from auglocal.engine.planning import costs as costs_module


def network(model="resnet20", rule="auglocal", input_size=16, **kw):
    cfg = RunConfig(model=model, rule=rule, d=3, dataset="synthetic", input_size=input_size, num_classes=4,
                    train_size=16, test_size=8, batch_size=4, **kw)
    data = build_data(cfg)
    resolve(cfg, data)
    model, aux = build_network(cfg, data)
    x, y = data.train_batch(cfg.seed, 0, 0, cfg.batch_size)
    return cfg, model, aux, build_local_modules(model, aux), x, y


def test_cache_path_honours_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_path() == tmp_path / "auglocal" / "module_times.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_path().parts[-3:] == (".cache", "auglocal", "module_times.json")


def test_cache_keys_by_machine_and_by_what_decides_the_cost(tmp_path):
    cache = TimingCache(tmp_path / "times.json")
    here = MachineKey.here("cpu", 1)
    key = CostKey("resnet110", "auglocal", 4, 0.5, "uniform", "cifar", 32, 10, 128)
    assert cache.get(here, key, 3) is None
    cache.put(here, key, [0.1, 0.2, 0.3])
    assert cache.get(here, key, 3).costs == [0.1, 0.2, 0.3]
    assert cache.get(here, key, 4) is None                                  # the module count changed
    other_machine = MachineKey(here.cpu + " (another)", here.cores, here.torch, here.threads, here.device)
    assert cache.get(other_machine, key, 3) is None
    for change in ({"d": 5}, {"batch_size": 64}, {"input_size": 64}, {"tau": 0.0}, {"rule": "dgl"},
                   {"memory_format": "channels_last"}, {"precision": "bf16"}):
        assert cache.get(here, CostKey(**{**key.__dict__, **change}), 3) is None, change
    cache.put(here, CostKey(**{**key.__dict__, "d": 5}), [1.0, 2.0, 3.0])   # a second entry keeps the first
    assert cache.get(here, key, 3).costs == [0.1, 0.2, 0.3]


def test_unreadable_cache_reads_empty_and_is_rewritten(tmp_path):
    path = tmp_path / "times.json"
    path.write_text("{ not json")
    cache = TimingCache(path)
    here, key = MachineKey.here("cpu", 1), CostKey("resnet20", "bp", 2, None, "uniform", None, 32, 10, 8)
    assert cache.get(here, key, 1) is None
    cache.put(here, key, [0.5])
    assert json.loads(path.read_text())["format"] == timing_cache.FORMAT
    assert cache.get(here, key, 1).costs == [0.5]


def test_balance_flops_is_the_plan_of_module_flops():
    """--balance flops: exactly the plan auglocal computed before --balance auto existed."""
    cfg, _, _, modules, x, y = network()
    chosen = choose_module_costs(modules, x, y, "flops", CostKey.of(cfg), k=2)
    before = make_plan(modules, 2, cfg.batch_size, module_costs_flops(modules, x[:2], y[:2]), unit="MAC")
    plan = make_plan(modules, 2, cfg.batch_size, chosen.costs, unit=chosen.unit)
    assert (plan.groups, plan.layer_ids, plan.module_costs, plan.unit) == \
        (before.groups, before.layer_ids, before.module_costs, before.unit)


def test_auto_uses_flops_for_a_dry_run_and_measures_then_caches_for_a_training_run(tmp_path, monkeypatch):
    cfg, _, _, modules, x, y = network()
    cache = TimingCache(tmp_path / "times.json")
    timed = []

    def fake_timing(mods, xb, yb, steps=3, warmup=1, kernels=None, device=None):
        timed.append(len(mods))
        return [0.01 * (i + 1) for i in range(len(mods))]

    monkeypatch.setattr("auglocal.engine.planning.balance.module_costs_timed", fake_timing)
    dry = choose_module_costs(modules, x, y, "auto", CostKey.of(cfg), k=2, measure=False, cache=cache)
    assert dry.unit == "MAC" and "no module times cached" in dry.source and timed == []
    run = choose_module_costs(modules, x, y, "auto", CostKey.of(cfg), k=2, measure=True, cache=cache)
    assert run.unit == "s" and timed == [len(modules)] and "measured now" in run.source
    again = choose_module_costs(modules, x, y, "auto", CostKey.of(cfg), k=2, measure=False, cache=cache)
    assert again.unit == "s" and again.costs == run.costs and timed == [len(modules)]
    assert "measured on this machine" in again.source
    choose_module_costs(modules, x, y, "time", CostKey.of(cfg), k=2, measure=False, cache=cache)
    assert timed == [len(modules)] * 2                                      # --balance time always measures
    one_each = choose_module_costs(modules, x, y, "auto", CostKey.of(cfg), k=len(modules), cache=cache)
    assert one_each.unit == "MAC"                                           # nothing to balance
    with pytest.raises(ValueError, match="expected one of auto, time, flops"):
        choose_module_costs(modules, x, y, "memory", CostKey.of(cfg), k=2, cache=cache)


@pytest.mark.parametrize("model, rule, strategy", [
    ("resnet32", "auglocal", "uniform"), ("resnet20", "auglocal", "repetitive"), ("resnet20", "auglocal", "conv3x3"),
    ("resnet20", "dgl", "uniform"), ("resnet20", "predsim", "uniform"), ("resnet20", "infopro", "uniform"),
    ("vgg13", "auglocal", "uniform"),
])
def test_counting_each_distinct_block_once_changes_no_count(model, rule, strategy, monkeypatch):
    """The FLOP memo (one count per distinct architecture and input shape) gives what counting every
    module afresh gives, for every rule and model family."""
    cfg, model_, aux, modules, x, y = network(model, rule, input_size=32, strategy=strategy)
    costs_module._MEMO.clear()
    remembered = (layer_costs(model_, aux), module_costs_flops(modules, x[:2], y[:2]))
    assert costs_module._MEMO                                               # the memo was used
    real = costs_module._counted_call

    def afresh(*args):
        costs_module._MEMO.clear()
        return real(*args)

    monkeypatch.setattr(costs_module, "_counted_call", afresh)
    assert (layer_costs(model_, aux), module_costs_flops(modules, x[:2], y[:2])) == remembered


def test_meta_counting_leaves_the_callers_modules_alone():
    _, model, aux, modules, x, y = network()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    layer_costs(model, aux)
    module_costs_flops(modules, x[:2], y[:2])
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_gpu_run_is_timed_on_its_gpu(tmp_path, monkeypatch):
    """--balance auto/time for a GPU run times the modules on the run's GPU (before: on the CPU, where the modules
    are built, and cached under the CPU's key), with a CUDA double standing in for the GPU."""
    cfg, _, _, modules, x, y = network()
    asked = []

    def fake_timing(mods, xb, yb, steps=3, warmup=1, kernels=None, device=None):
        asked.append(None if device is None else str(device))
        return [0.01 * (i + 1) for i in range(len(mods))]

    monkeypatch.setattr("auglocal.engine.planning.balance.module_costs_timed", fake_timing)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    cache = TimingCache(tmp_path / "times.json")
    run = choose_module_costs(modules, x, y, "auto", CostKey.of(cfg), k=2, cache=cache, device="cuda:1")
    assert asked == ["cuda:1"] and run.unit == "s"
    key = CostKey.of(cfg)
    assert cache.get(MachineKey.here("cuda:1", 1), key, len(modules)) is not None   # cached as the GPU's times
    assert cache.get(MachineKey.here("cpu", 1), key, len(modules)) is None


def test_a_gpu_this_process_cannot_reach_is_balanced_by_macs_and_says_so(tmp_path, monkeypatch):
    cfg, _, _, modules, x, y = network()
    monkeypatch.setattr("auglocal.engine.planning.balance.module_costs_timed", lambda *a, **k: pytest.fail("timed"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for balance in ("auto", "time"):
        chosen = choose_module_costs(modules, x, y, balance, CostKey.of(cfg), k=2,
                                     cache=TimingCache(tmp_path / "t.json"), device="cuda:0")
        assert chosen.unit == "MAC" and "cannot time modules on cuda:0" in chosen.source
        assert "balanced by MACs" in chosen.source and "\n" not in chosen.source
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    chosen = choose_module_costs(modules, x, y, "time", CostKey.of(cfg), k=2, cache=TimingCache(tmp_path / "t.json"),
                                 device="cuda:3")
    assert chosen.unit == "MAC" and "sees 1 GPU(s)" in chosen.source


def test_the_pipeline_plan_times_modules_on_the_workers_device(tmp_path, monkeypatch):
    """plan_pipeline asks for timing on the first worker's device: cuda:0 for --gpus 0."""
    from auglocal.launch.run.pipeline import PipelineOptions, plan_pipeline

    cfg, model, aux, modules, x, y = network()
    asked = []

    def fake_timing(mods, xb, yb, steps=3, warmup=1, kernels=None, device=None):
        asked.append(str(device))
        return [0.01] * len(mods)

    monkeypatch.setattr("auglocal.engine.planning.balance.module_costs_timed", fake_timing)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = build_data(cfg)
    plan, placement, _ = plan_pipeline(cfg, data, PipelineOptions(workers="2", gpus=["cuda:0"], balance="time"),
                                       network=(model, aux))
    assert asked == ["cuda:0"] and placement.devices == ["cuda:0", "cuda:0"] and plan.unit == "s"

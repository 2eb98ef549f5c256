"""R x K planning on cases small enough to work out by hand: the all-reduce models, layouts, the chooser, DDP BP."""

import pytest
from auglocal.engine.planning.allreduce import (
    DEFAULT_GLOO_CPU,
    AllReduceCache,
    MeasuredAllReduce,
    RingModel,
    cpu_model_of_allreduce,
    machine_key,
)
from auglocal.engine.planning.ddp import FIRST_BUCKET_BYTES, buckets, predict_ddp
from auglocal.engine.planning.replicas import Network, best_layout, format_layout, simulate_layout
from auglocal.engine.planning.simulator import ModuleTime, run_events

FREE = RingModel(0.0, 1e30)
RING = RingModel(alpha_s=0.001, bytes_per_s=1e6)     # 1 ms + 2(R-1)/R x bytes / 1 MB/s
EVENTS = run_events(20, 1, 0)


def four_modules(param_bytes=1000):
    """Four equal modules, 0.3 s each per batch of 64 (0.1 forward), `param_bytes` each."""
    return Network(times=[ModuleTime(0.1, 0.2)] * 4, param_bytes=[param_bytes] * 4, out_bytes=[10] * 4, batch=64,
                   layer_ids=[[i] for i in range(4)], params=[param_bytes // 4] * 4)


def test_ring_model_is_free_alone_and_follows_the_ring_factor():
    assert RING.seconds(10_000, 1) == 0.0
    assert RING.seconds(0, 4) == 0.0
    assert RING.seconds(10_000, 2) == pytest.approx(0.001 + 10_000 / 1e6)          # 2(2-1)/2 = 1
    assert RING.seconds(10_000, 4) == pytest.approx(0.001 + 1.5 * 10_000 / 1e6)    # 2(4-1)/4 = 1.5
    with pytest.raises(ValueError):
        RingModel(0.001, 0.0)


def test_measured_table_interpolates_floors_and_extends():
    table = MeasuredAllReduce(nbytes=(1000, 2000, 4000), seconds_at=(1.0, 2.0, 6.0), replicas=2)
    assert table.seconds(1500, 2) == pytest.approx(1.5)
    assert table.seconds(10, 2) == pytest.approx(1.0)            # below the smallest: its latency
    assert table.seconds(5000, 2) == pytest.approx(8.0)          # above: the last slope, 2 ms per byte
    assert table.seconds(3000, 1) == 0.0
    # 4 replicas: the bandwidth term grows by 1.5 - 1 of the last slope, the measured latency stays
    assert table.seconds(3000, 4) == pytest.approx(4.0 + 0.5 * 3000 * 0.002)
    with pytest.raises(ValueError):
        MeasuredAllReduce(nbytes=(2000, 1000), seconds_at=(1.0, 2.0))


def test_the_default_gloo_table_grows_with_size():
    assert DEFAULT_GLOO_CPU.seconds(64 << 20, 2) > 10 * DEFAULT_GLOO_CPU.seconds(1024, 2) > 0


def test_measured_table_is_cached_and_an_implausible_one_refused(tmp_path, capsys):
    cache = AllReduceCache(tmp_path / "ar.json")
    assert cpu_model_of_allreduce(cache) is DEFAULT_GLOO_CPU
    cache.put(machine_key(), [1024, 4096], [1e-4, 3e-4], 2)
    found = cpu_model_of_allreduce(cache)
    assert found.seconds_at == (1e-4, 3e-4) and "measured on this machine" in found.label
    cache.put(machine_key(), [4096, 1024], [1e-4, 3e-4], 2)          # sizes not increasing
    assert cpu_model_of_allreduce(cache) is DEFAULT_GLOO_CPU
    assert "ignoring the cache file" in capsys.readouterr().err


def test_measure_allreduce_times_two_gloo_processes():
    from auglocal.engine.planning.allreduce_timing import measure_allreduce

    small, large = measure_allreduce(sizes=[1024, 16 << 20], world=2, repeats=2)
    assert 0 < small < large < 10


def test_replicas_halve_the_work_and_add_each_modules_reduction():
    net = four_modules()
    one = simulate_layout(net, [[0, 1, 2, 3]], 1, RING, EVENTS)
    assert one.images_per_s == pytest.approx(64 / 1.2)
    two = simulate_layout(net, [[0, 1, 2, 3]], 2, RING, EVENTS, overlap=False)
    # shard 32: 0.6 s of compute, and per module 1 ms + 1000 B / 1 MB/s = 2 ms, four of them, blocking
    assert two.stage_reduce_s == pytest.approx([0.008])
    assert two.step_s == pytest.approx(0.608)
    assert two.images_per_s == pytest.approx(64 / 0.608)
    assert two.stage_param_bytes == [4000] and two.stage_params == [1000]


def test_overlap_leaves_only_each_stages_last_reduction_on_the_path():
    two = simulate_layout(four_modules(), [[0, 1, 2, 3]], 2, RING, EVENTS)    # the default: as the runtime does
    assert two.step_s == pytest.approx(0.602)
    # reductions longer than the compute bound the step by their sum
    slow = simulate_layout(four_modules(param_bytes=400_000), [[0, 1, 2, 3]], 2, RING, EVENTS)
    assert slow.step_s == pytest.approx(4 * 0.401)


def test_stages_pace_the_layout_by_the_slowest_one_with_its_reduction():
    net = Network(times=[ModuleTime(0.1, 0.2)] * 2, param_bytes=[1000, 9000], out_bytes=[0, 0], batch=64)
    lay = simulate_layout(net, [[0], [1]], 2, RING, EVENTS)     # one module a stage: its reduction is the last
    assert lay.stage_reduce_s == pytest.approx([0.002, 0.010])
    assert lay.step_s == pytest.approx(0.15 + 0.010)         # stage 1: 0.15 s at shard 32, then its 10 ms


def test_the_chooser_prefers_the_pipeline_when_reductions_cost_and_replicas_when_they_do_not():
    choice = best_layout(4, four_modules(), RING, EVENTS)
    assert (choice.best.replicas, choice.best.k) == (1, 4)
    assert all(lay.devices <= 4 for lay in choice.candidates)
    assert len(choice.candidates) == 8          # K=1: R 1..4, K=2: R 1..2, K=3: R 1, K=4: R 1
    rates = [lay.images_per_s for lay in choice.candidates]
    assert all(a >= b - 1e-6 for a, b in zip(rates[:-1], rates[1:], strict=True))   # best first
    # two modules on four devices: only replicas can use the rest
    two = Network(times=[ModuleTime(0.1, 0.2)] * 2, param_bytes=[1000] * 2, out_bytes=[0, 0], batch=64)
    best = best_layout(4, two, FREE, EVENTS).best
    assert (best.replicas, best.k) == (2, 2)
    assert best.images_per_s == pytest.approx(64 / 0.15)
    # ties (free reductions, equal modules: 1 x 4, 2 x 2, 4 x 1 all 0.3 s) go to the fewest replicas
    assert best_layout(4, four_modules(), FREE, EVENTS).best.replicas == 1


def test_the_chooser_keeps_a_fixed_r_or_k_and_refuses_none():
    assert {lay.k for lay in best_layout(4, four_modules(), RING, EVENTS, replicas=[2]).candidates} == {1, 2}
    assert {lay.replicas for lay in best_layout(4, four_modules(), RING, EVENTS, ks=[1]).candidates} == {1, 2, 3, 4}
    with pytest.raises(ValueError):
        best_layout(4, four_modules(), RING, EVENTS, replicas=[8])


def test_shared_cpu_cores_are_split_among_the_replicas():
    net = four_modules()
    # 2 replicas x 1 worker on 2 cores: a core each, as with a device each
    assert simulate_layout(net, [[0, 1, 2, 3]], 2, FREE, EVENTS, cores=2).images_per_s == pytest.approx(64 / 0.6)
    # on 1 core they take turns: no faster than one process on the whole batch
    assert simulate_layout(net, [[0, 1, 2, 3]], 2, FREE, EVENTS, cores=1).images_per_s == pytest.approx(64 / 1.2)


def test_layout_table_names_each_stage_and_the_step():
    text = format_layout(simulate_layout(four_modules(), [[0, 1], [2, 3]], 2, RING, EVENTS))
    assert "replicas x workers 2 x 2 (R x K = 4 devices), shard batch 32" in text
    assert "2.00 KB" in text and "4.000" in text       # two modules' 1000 B each; two reductions of 2 ms


def test_ddp_buckets_and_overlap():
    assert buckets(3 * 2**20) == [FIRST_BUCKET_BYTES, 2 * 2**20]
    assert buckets(60 * 2**20) == [2**20, 25 * 2**20, 25 * 2**20, 9 * 2**20]
    # one bucket: ready only when the backward ends, all of its reduction exposed
    one = predict_ddp(2, 64, 0.4, 0.8, 1000, RING)
    assert one.step_s == pytest.approx(0.2 + 0.4 + 0.002)
    assert one.images_per_s == pytest.approx(64 / 0.602)
    # the first bucket's reduction hides behind the rest of the backward; the last one's does not
    net = 2 * 2**20
    two = predict_ddp(2, 64, 0.4, 8.0, net, RingModel(0.0, 2**20))
    assert two.step_s == pytest.approx(0.2 + 4.0 + 1.0)
    assert predict_ddp(1, 64, 0.4, 0.8, net, RING).step_s == pytest.approx(1.2)
    assert predict_ddp(2, 64, 0.4, 8.0, net, RingModel(0.0, 2**20), overlap=False).step_s == pytest.approx(6.2)


def test_network_of_turns_mac_costs_into_seconds_and_counts_gradient_bytes():
    from auglocal.engine.config import RunConfig, build_data, build_network, resolve
    from auglocal.engine.local_module import build_local_modules
    from auglocal.engine.planning import module_costs_flops
    from auglocal.engine.planning.replicas import network_of

    cfg = RunConfig(model="resnet20", d=3, dataset="synthetic", input_size=16, num_classes=4, train_size=16,
                    test_size=8, batch_size=8)
    data = build_data(cfg)
    resolve(cfg, data)
    mods = build_local_modules(*build_network(cfg, data))
    x, y = data.shape_batch(2)
    macs = module_costs_flops(mods, x, y)
    net = network_of(mods, x, macs, "MAC", 8, macs_per_s=1e9)
    assert [t.total_s for t in net.times] == pytest.approx([m * 8 / 1e9 for m in macs])
    assert net.param_bytes == [4 * sum(p.numel() for p in m.parameters()) for m in mods]   # fp32 gradients
    assert all(0 < t.forward_s < t.total_s for t in net.times)
    mods[0].layers[0].requires_grad_(False)          # frozen parameters have no gradient to reduce
    assert network_of(mods, x, macs, "MAC", 8, 1e9).param_bytes[0] < net.param_bytes[0]
    with pytest.raises(ValueError, match="MAC rate"):
        network_of(mods, x, macs, "MAC", 8)

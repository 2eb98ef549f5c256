"""The pipeline simulator on cases small enough to work out by hand."""

import pytest
import torch

from engine.planning.simulator import (
    CHECKPOINT,
    EVAL,
    TRAIN,
    Event,
    LinkCost,
    ModuleTime,
    WorkerLoad,
    module_phase_times,
    run_events,
    simulate,
    worker_loads,
)

FREE = LinkCost()


def trains(n: int) -> list[Event]:
    return [Event(TRAIN, 0, s) for s in range(n)]


def test_one_worker_runs_at_its_step_time():
    sim = simulate(trains(10), [WorkerLoad(emit_s=0.3, tail_s=0.7, eval_s=0.2)], batch_size=8, link=FREE)
    assert sim.train_done_s == pytest.approx([float(j + 1) for j in range(10)])
    assert sim.images_per_s == pytest.approx(8.0)
    assert sim.busy_fractions == pytest.approx([1.0])


def test_two_equal_workers_double_the_rate_after_the_fill():
    load = WorkerLoad(emit_s=0.5, tail_s=0.5, eval_s=0.5)
    sim = simulate(trains(10), [load, load], batch_size=8, link=FREE)
    # worker 1 takes step j at j + 0.5 (worker 0's emit) and finishes it one second later
    assert sim.train_done_s == pytest.approx([j + 1.5 for j in range(10)])
    assert sim.images_per_s == pytest.approx(8.0)
    assert sim.busy_fractions == pytest.approx([10 / 10.5, 10 / 10.5])


def test_slow_worker_blocks_its_upstream_at_the_window():
    fast = WorkerLoad(emit_s=0.1, tail_s=0.9, eval_s=0.1)
    slow = WorkerLoad(emit_s=3.0, tail_s=0.0, eval_s=1.0)
    sim = simulate(trains(8), [fast, slow], batch_size=6, link=FREE, window=2)
    assert sim.images_per_s == pytest.approx(2.0)               # 6 images per 3 s
    # worker 1 takes steps at 0.1, 3.1, 6.1, ...; worker 0's send of step 4 waits until worker 1 has taken
    # step 2 (at 6.1), so worker 0 finishes step 4 at 7.0 and only then takes step 5
    assert sim.start_s[1][:3] == pytest.approx([0.1, 3.1, 6.1])
    assert sim.start_s[0][5] == pytest.approx(7.0)
    assert sim.busy_fractions[0] == pytest.approx(8 * 1.0 / sim.makespan_s)


def test_link_cost_is_latency_plus_bytes_over_bandwidth():
    link = LinkCost(latency_s=0.001, bytes_per_s=1e6)
    assert link(2000) == pytest.approx(0.003)
    load = WorkerLoad(emit_s=0.5, tail_s=0.5, eval_s=0.5, out_bytes=100_000)   # 0.101 s per message
    sim = simulate(trains(10), [load, WorkerLoad(1.0, 0.0, 0.5)], batch_size=10, link=link)
    # worker 0 is busy 1.101 s per step including its send: the bottleneck
    assert sim.images_per_s == pytest.approx(10 / 1.101)


def test_shared_cores_bound_the_rate_by_total_work():
    load = WorkerLoad(emit_s=0.5, tail_s=0.5, eval_s=0.5)
    sim = simulate(trains(12), [load] * 4, batch_size=8, link=FREE, cores=2)
    assert sim.pipeline_images_per_s == pytest.approx(8.0)
    assert sim.images_per_s == pytest.approx(2 * 8 / 4.0)


def test_eval_batches_and_markers_pass_through_and_cost_time():
    events = run_events(steps_per_epoch=3, epochs=2, test_batches=2, checkpoint_every=2)
    kinds = [e.kind for e in events]
    # markers every 2 global steps (not after an epoch's last step, where the epoch-end marker follows)
    assert kinds == [TRAIN, TRAIN, CHECKPOINT, TRAIN, EVAL, EVAL, CHECKPOINT,
                     TRAIN, CHECKPOINT, TRAIN, TRAIN, EVAL, EVAL, CHECKPOINT]
    sim = simulate(events, [WorkerLoad(emit_s=1.0, tail_s=0.0, eval_s=0.25, checkpoint_s=0.5)], batch_size=1,
                   link=FREE)
    assert sim.makespan_s == pytest.approx(6 * 1.0 + 4 * 0.25 + 4 * 0.5)
    assert run_events(3, 2, 1, max_steps=4)[-2:] == [Event(EVAL, 1, 0), Event(CHECKPOINT, 2, 0)]


def test_worker_loads_emit_after_the_last_primary_forward():
    times = [ModuleTime(1.0, 2.0), ModuleTime(0.5, 1.5), ModuleTime(0.25, 0.75)]
    loads = worker_loads([[0, 1], [2]], times, out_bytes=[10, 20, 30])
    assert loads[0] == WorkerLoad(emit_s=3.5, tail_s=1.5, eval_s=1.5, out_bytes=20)
    assert loads[1] == WorkerLoad(emit_s=0.25, tail_s=0.75, eval_s=0.25, out_bytes=0)


def test_module_phase_times_measure_each_module():
    from engine.auxnets import build_aux_nets
    from engine.models import build_model
    from engine.rules import build_local_modules

    model = build_model("resnet20", num_classes=10)
    modules = build_local_modules(model, build_aux_nets(model, "auglocal", d=2, tau=0.5))
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    times, out_bytes = module_phase_times(modules, x, y, steps=1, warmup=0)
    assert len(times) == len(modules) == len(out_bytes)
    assert all(t.forward_s > 0 and t.rest_s > 0 for t in times)
    assert out_bytes[0] == 2 * 16 * 32 * 32 * 4     # the first block's output: 16 channels at 32x32

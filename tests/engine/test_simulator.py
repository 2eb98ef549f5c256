"""The pipeline simulator on cases small enough to work out by hand."""

import pytest
import torch
from auglocal.engine.planning.shared_cores import replay_shared
from auglocal.engine.planning.simulator import (
    CHECKPOINT,
    EVAL,
    TRAIN,
    Event,
    LinkCost,
    ModuleTime,
    WorkerLoad,
    event_cost,
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
    sim = simulate(trains(200), [load] * 4, batch_size=8, link=FREE, cores=2)
    assert sim.pipeline_images_per_s == pytest.approx(8.0)
    assert sim.images_per_s == pytest.approx(2 * 8 / 4.0, rel=0.02)   # 4 s of work per step on 2 cores
    # a run too short for a steady state: its drain alone would read faster than 2 cores can go
    short = simulate(trains(4), [load] * 8, batch_size=8, link=FREE, cores=2)
    assert short.images_per_s <= 2 * 8 / 8.0 + 1e-9


def test_time_slicing_slows_each_worker_that_shares_a_core():
    """One core, two workers of 1 s each: after worker 0's first step alone, both run at half speed."""
    load = WorkerLoad(emit_s=1.0, tail_s=0.0, eval_s=0.5)
    sim = simulate(trains(4), [load, load], batch_size=1, link=FREE, cores=1)
    assert sim.train_done_s == pytest.approx([3.0, 5.0, 7.0, 8.0])   # the last step runs alone again
    assert sim.busy_fractions == pytest.approx([7 / 8, 7 / 8])       # time-sliced seconds count in full
    assert sim.pipeline_images_per_s == pytest.approx(1.0)           # the same run with a core each


def test_the_coordinator_takes_its_share_of_the_cores():
    load = WorkerLoad(emit_s=1.0, tail_s=0.0, eval_s=0.5)
    sim = simulate(trains(4), [load], batch_size=1, link=FREE, cores=1, feed_s=1.0)
    assert sim.train_done_s == pytest.approx([3.0, 5.0, 7.0, 8.0])
    assert simulate(trains(4), [load], batch_size=1, link=FREE, cores=2, feed_s=1.0).train_done_s == \
        pytest.approx([2.0, 3.0, 4.0, 5.0])


@pytest.mark.parametrize("window", [1, 2, 3])
def test_shared_replay_with_a_core_each_is_the_recurrence(window):
    """With as many cores as processes nothing is time-sliced: the event-by-event replay must give the
    recurrence's times for every event on every worker (eval batches, markers, links and credits included)."""
    events = run_events(steps_per_epoch=5, epochs=2, test_batches=2, checkpoint_every=3)
    loads = [WorkerLoad(0.3, 0.4, 0.1, 0.05, 4000), WorkerLoad(0.9, 0.2, 0.3, 0.05, 2000),
             WorkerLoad(0.1, 0.1, 0.05, 0.05, 0)]
    link = LinkCost(latency_s=0.01, bytes_per_s=1e5)
    ref = simulate(events, loads, 4, link, window=window, feed_s=0.2, input_bytes=1000)
    costs = [[(0.2, 0.0, 0 if e.kind == CHECKPOINT else 1000) for e in events]]
    costs += [[event_cost(load, e) for e in events] for load in loads]
    start, done, busy = replay_shared(costs, link, window, cores=len(costs))
    assert [row for row in start[1:]] == [pytest.approx(row) for row in ref.start_s]
    assert [done[-1][j] for j, e in enumerate(events) if e.kind == TRAIN] == pytest.approx(ref.train_done_s)
    assert [b / ref.makespan_s for b in busy[1:]] == pytest.approx(ref.busy_fractions)


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
    from auglocal.engine.auxnets import build_aux_nets
    from auglocal.engine.local_module import build_local_modules
    from auglocal.engine.models import build_model

    model = build_model("resnet20", num_classes=10)
    modules = build_local_modules(model, build_aux_nets(model, "auglocal", d=2, tau=0.5))
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    times, out_bytes = module_phase_times(modules, x, y, steps=1, warmup=0)
    assert len(times) == len(modules) == len(out_bytes)
    assert all(t.forward_s > 0 and t.rest_s > 0 for t in times)
    assert out_bytes[0] == 2 * 16 * 32 * 32 * 4     # the first block's output: 16 channels at 32x32

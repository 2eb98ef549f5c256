"""Thread workers end bitwise equal to the sequential trainer, like process workers (tests/launch/test_parity.py).

Every partition is trained by threads of host processes: all workers in one host (activations by reference
between every pair), or mixed (several hosts, ZeroMQ between them, by reference inside each).
"""

import json

import pytest
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline

from tests.launch.test_parity import assert_same_weights, sequential_reference, small_run


def run_threads(cfg, data, workers, per_host: int, tmp_path, transport: str = "ipc"):
    out = tmp_path / f"threads-{cfg.rule}-{workers}-{per_host}-{transport}"
    opts = PipelineOptions(workers=str(workers), balance="flops", threads=1, worker_kind="thread",
                           workers_per_host=per_host, transport=transport)
    assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    return out


def check_parity(rule: str, workers, per_host: int, tmp_path, epochs: int = 2, transport: str = "ipc") -> dict:
    cfg, data = small_run(rule, epochs=epochs)
    model, aux, history, updates = sequential_reference(cfg, data)
    out = run_threads(cfg, data, workers, per_host, tmp_path, transport)
    assert_same_weights(model, aux, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_accuracy"] for r in rows if r["kind"] == "epoch"] == [h.test_accuracy for h in history]
    summary = json.loads((out / "summary.json").read_text())
    assert {int(k): v for k, v in summary["updates"].items()} == updates
    return json.loads((out / "plan.json").read_text())


@pytest.mark.parametrize("transport", ["ipc", pytest.param("curve", marks=pytest.mark.slow)])
def test_mixed_hosts_equal_sequential(transport, tmp_path):
    """Two host processes of two thread workers each: by reference inside a host, ZeroMQ between them (also
    with CurveZMQ: every host binds and connects with the attempt's keys)."""
    plan = check_parity("auglocal", 4, 2, tmp_path, epochs=1, transport=transport)
    assert plan["hosts"] == [[0, 1], [2, 3]]


@pytest.mark.slow
@pytest.mark.parametrize("rule, workers", [
    ("auglocal", 1), ("auglocal", 2), ("auglocal", 3), ("auglocal", "layer"), ("dgl", 2), ("dgl", 3),
])
def test_thread_workers_equal_sequential(rule, workers, tmp_path):
    plan = check_parity(rule, workers, 0, tmp_path)
    assert plan["hosts"] == [list(range(len(plan["groups"])))]     # one host holds every worker


@pytest.mark.slow
def test_mixed_hosts_dgl_layer_equal_sequential(tmp_path):
    plan = check_parity("dgl", "layer", 2, tmp_path)
    assert all(len(h) <= 2 for h in plan["hosts"]) and len(plan["hosts"]) > 2


def test_host_groups_hold_consecutive_workers_of_one_device():
    from auglocal.launch.run.hosts import gpu_sharing, host_groups, stream_devices

    assert host_groups(["cpu"] * 5, "process") is None
    assert host_groups(["cpu"] * 5, "thread") == [[0, 1, 2, 3, 4]]
    assert host_groups(["cpu"] * 5, "thread", 2) == [[0, 1], [2, 3], [4]]
    devices = stream_devices(5, ["cuda:0", "cuda:1"], 3)
    assert devices == ["cuda:0"] * 3 + ["cuda:1"] * 2
    assert host_groups(devices, "thread") == [[0, 1, 2], [3, 4]]
    assert gpu_sharing(devices) == [[0, 1, 2], [3, 4]] and gpu_sharing(["cpu"] * 3) == []


def test_worker_kind_combinations_are_checked():
    from auglocal.engine.config import UsageError
    from auglocal.launch.run.hosts import resolve_kind

    assert resolve_kind("auto", ["cuda:0"], 4) == "thread"
    assert resolve_kind("auto", ["cuda:0"], 0) == "process"
    assert resolve_kind("auto", [], 0, workers=1) == "process"
    assert resolve_kind("auto", [], 0, workers=10_000) == "thread"     # more workers than cores
    with pytest.raises(UsageError, match="needs GPUs"):
        resolve_kind("thread", [], 2)
    with pytest.raises(UsageError, match="cannot be combined"):
        resolve_kind("process", ["cuda:0"], 2)


def test_gantt_labels_each_thread_worker_on_its_own_row():
    from auglocal.launch.report.gantt import row_label

    hosts = [[0, 1], [2]]
    assert [row_label(r, hosts) for r in range(3)] == ["worker 0 (thread, host 0)", "worker 1 (thread, host 0)",
                                                        "worker 2"]
    assert row_label(1, None) == "worker 1"


def test_simulator_bounds_workers_sharing_a_gpu_by_their_summed_work():
    from auglocal.engine.planning.simulator import LinkCost, WorkerLoad, run_events, simulate

    loads = [WorkerLoad(0.1, 0.0, 0)] * 4
    events = run_events(20, 1, 0)
    alone = simulate(events, loads, 10, LinkCost())
    shared = simulate(events, loads, 10, LinkCost(), shared=[[0, 1, 2, 3]])
    assert alone.images_per_s == pytest.approx(100, rel=0.05)
    assert shared.images_per_s == pytest.approx(25, rel=0.01)      # 10 images per 4 x 0.1 s


@pytest.mark.parametrize("flags, message", [
    (["--streams-per-gpu", "2", "--gpus", "cpu"], "needs GPUs"),
    (["--workers-per-host", "-1"], "--workers-per-host"),
])
def test_impossible_thread_flags_exit_2(flags, message, capsys):
    from auglocal.launch.cli import main

    code = main(["--dataset", "synthetic", "--model", "resnet20", "--dry-run", "--no-progress", *flags])
    assert code == 2
    assert message in capsys.readouterr().err

"""The warm spare (workers/runtime/spare.py, launch/backends/one_host/spares.py): it waits for a spec and leaves
when its coordinator is gone; the stage it makes from its prebuilt network is bitwise the stage a cold worker
builds; the pool hands a spec to a waiting spare, starts a cold worker when none waits, and ends its spares."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from auglocal.engine.config import RunConfig, resolve
from auglocal.engine.data import build_dataset
from auglocal.workers.links.link import Link
from auglocal.workers.runtime.spare import Prebuilt, wait_for_spec
from auglocal.workers.runtime.spec import WorkerSpec, build_stage


def small_spec(rank: int = 1, modules=(2, 3), **kw) -> WorkerSpec:
    data = build_dataset("synthetic", seed=1, input_size=8, num_classes=4, train_size=16, test_size=8)
    cfg = resolve(RunConfig(model="resnet20", d=3, dataset="synthetic", epochs=1, batch_size=4, input_size=8,
                            num_classes=4, seed=3), data)
    link = Link("ipc:///nonexistent/x", 2)
    fields = dict(rank=rank, modules=list(modules), config=cfg.to_dict(), inbox=link, outbox=None, results=link,
                  run_id="r", secret="s", out_dir="/nonexistent", coordinator_pid=0,
                  data_stats={"mean": list(data.mean), "std": list(data.std)})
    return WorkerSpec(**{**fields, **kw})


def test_a_waiting_spare_takes_the_spec_it_is_sent():
    reader, writer = mp.Pipe(duplex=False)
    spec = small_spec()
    writer.send(spec)
    assert wait_for_spec(reader, lambda: True, watch_s=0.01) == spec


def test_a_spare_leaves_when_the_coordinator_hangs_up_or_is_gone():
    reader, writer = mp.Pipe(duplex=False)
    writer.close()
    assert wait_for_spec(reader, lambda: True, watch_s=0.01) is None
    reader, writer = mp.Pipe(duplex=False)
    checks = []
    assert wait_for_spec(reader, lambda: checks.append(1) or len(checks) < 3, watch_s=0.01) is None
    assert len(checks) == 3           # it kept waiting while the coordinator ran
    writer.send("not a spec")
    assert wait_for_spec(reader, lambda: True, watch_s=0.01) is None


def _weights(stage) -> list[torch.Tensor]:
    return [t for m in stage.modules for t in [*m.parameters(), *m.buffers()]]


def test_the_prebuilt_stage_is_bitwise_a_cold_workers():
    spec = small_spec()
    prebuilt = Prebuilt(spec.config, spec.data_stats)
    torch.manual_seed(12345)            # whatever ran in between: the network was built from the run's seed
    warm, cold = prebuilt.stage_for(spec), build_stage(spec)
    assert [m.layer_ids for m in warm.modules] == [m.layer_ids for m in cold.modules] == [[2], [3]]
    assert all(a is b for a, b in zip(warm.modules, prebuilt.modules[2:4], strict=True))   # nothing rebuilt
    assert all(torch.equal(a, b) for a, b in zip(_weights(warm), _weights(cold), strict=True))
    x = torch.randn(4, 16, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    a, b = warm.train_step(x, y, step=1), cold.train_step(x, y, step=1)
    assert torch.equal(a.output, b.output)
    assert all(torch.equal(p, q) for p, q in zip(_weights(warm), _weights(cold), strict=True))


def test_a_spec_of_another_network_is_built_anew():
    spec = small_spec()
    prebuilt = Prebuilt(spec.config, spec.data_stats)
    other = replace(spec, config={**spec.config, "seed": 4})
    stage = prebuilt.stage_for(other)
    assert all(a is not b for a, b in zip(stage.modules, prebuilt.modules[2:4], strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(_weights(stage), _weights(build_stage(spec)), strict=True))


@pytest.fixture
def coordinator_standin():
    """A process that stands for the coordinator, whose death the spare must notice."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _gone_within(process, seconds: float) -> bool:
    process.join(timeout=seconds)
    return not process.is_alive()


def test_the_pool_starts_spares_ends_them_and_falls_back_to_a_cold_start(coordinator_standin):
    from auglocal.launch.backends.one_host.processes import forkserver_context
    from auglocal.launch.backends.one_host.spares import SparePool

    ctx = forkserver_context()
    template = small_spec(coordinator_pid=coordinator_standin.pid)
    pool = SparePool(ctx, 2)
    pool.fill()                                  # no template yet: nothing to start
    assert pool.waiting == []
    pool.fill([template, replace(template, rank=0)])
    spares = [s.process for s in pool.waiting]
    assert len(spares) == 2 and all(p.is_alive() for p in spares) and pool.device == "cpu"
    pool.close()
    assert all(_gone_within(p, 10) for p in spares) and pool.waiting == []

    empty = SparePool(ctx, 0)
    empty.fill([template])
    started = []
    import auglocal.launch.backends.one_host.spares as spares_module

    real = spares_module.WorkerProcess
    spares_module.WorkerProcess = lambda spec, ctx=None, **kw: started.append((spec, ctx)) or "cold"
    try:
        assert empty.launch(template) == "cold" and started == [(template, ctx)] and empty.cold == 1
    finally:
        spares_module.WorkerProcess = real


def test_a_spare_dies_with_its_coordinator(coordinator_standin):
    from auglocal.launch.backends.one_host.processes import forkserver_context
    from auglocal.launch.backends.one_host.spares import SparePool

    pool = SparePool(forkserver_context(), 1)
    pool.fill([small_spec(coordinator_pid=coordinator_standin.pid)])
    (spare,) = [s.process for s in pool.waiting]
    time.sleep(0.5)
    assert spare.is_alive()
    coordinator_standin.kill()                   # SIGKILL: nobody closes the pipe, the spare must notice itself
    coordinator_standin.wait()
    assert _gone_within(spare, 10), "a spare outlived its coordinator"
    assert spare.exitcode == 0
    pool.close()


def test_spares_hold_a_cuda_context_only_where_every_worker_shares_one_gpu():
    from auglocal.launch.backends.one_host.spares import SparePool

    pool = SparePool(None, 0)          # no spare started: only the choice of device
    pool.fill([small_spec(device="cuda:0"), small_spec(rank=0, device="cuda:0")])
    assert pool.device == "cuda:0"
    pool.fill([small_spec(device="cuda:0"), small_spec(rank=0, device="cuda:1")])
    assert pool.device == "cpu"

"""The coordinator on a divergence report (launch/run/divergence.py): it names the earliest (step, layer) of the run,
as the sequential trainer would, whichever report arrives first, and fails the run for good."""

from __future__ import annotations

import time

import pytest
from auglocal.launch.run.coordinator import WorkerFailed
from auglocal.workers.wire.messages import Kind
from auglocal.workers.wire.protocol import DivergedMeta, MetricsMeta

from tests.launch.test_coordinator import coord, report  # noqa: F401 - the in-process coordinator fixture


def metrics(c, rank: int, step: int) -> None:
    report(c, rank, Kind.METRICS, MetricsMeta(0.1, 4, {str(2 * rank): 1.0}, 2 if rank else None), step=step)


def diverged(c, rank: int, step: int, layer: int) -> None:
    report(c, rank, Kind.DIVERGED, DivergedMeta(layer, "loss", "nan"), step=step)


def test_a_later_report_that_arrives_first_does_not_win(coord):   # noqa: F811
    """Worker 1 reports step 2 before worker 0 has finished its aux work of step 2, which diverges too."""
    diverged(coord, 1, step=2, layer=2)
    for step in (0, 1):
        metrics(coord, 0, step)
    diverged(coord, 0, step=2, layer=0)
    with pytest.raises(WorkerFailed) as caught:
        coord._drain()
    err = caught.value
    assert not err.restartable and err.rank == 0
    assert (err.divergence.step, err.divergence.layer, err.divergence.worker) == (2, 0, 0)
    assert "non-finite loss (nan) at epoch 1, step 2, in the local module of layer 0 (worker 0)" in str(err)


def test_a_worker_behind_can_still_name_an_earlier_step(coord):   # noqa: F811
    diverged(coord, 0, step=3, layer=1)
    metrics(coord, 1, 0)
    diverged(coord, 1, step=1, layer=3)
    with pytest.raises(WorkerFailed) as caught:
        coord._drain()
    assert (caught.value.divergence.step, caught.value.divergence.worker) == (1, 1)


def test_it_waits_only_for_workers_that_could_report_an_earlier_one(coord):   # noqa: F811
    metrics(coord, 0, 4)
    diverged(coord, 1, step=4, layer=2)          # worker 0 is past step 4: nothing to wait for
    t0 = time.monotonic()
    with pytest.raises(WorkerFailed) as caught:
        coord._drain()
    assert caught.value.divergence.worker == 1 and time.monotonic() - t0 < 5
    coord.workers[0].alive = False               # a dead worker is not waited for either
    diverged(coord, 1, step=6, layer=2)
    t0 = time.monotonic()
    with pytest.raises(WorkerFailed):
        coord._drain()
    assert time.monotonic() - t0 < 5

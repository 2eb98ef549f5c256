"""Step reports batched (workers/runtime/reports.py): a METRICS message carries several steps' figures, each row
checked like a message of its own, and a pipelined run still records every step, with sane per-step rates."""

from __future__ import annotations

import json
import math

import pytest
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline
from auglocal.workers.runtime.reports import MetricsBatch
from auglocal.workers.wire import protocol
from auglocal.workers.wire.messages import Codec, Kind, MessageError
from auglocal.workers.wire.protocol import MetricsMeta, Route

from tests.faults.support import small_run


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def figures(step: int) -> MetricsMeta:
    return MetricsMeta(busy=0.001 * step, n=4, losses={"0": 1.0 / (step + 1)}, correct=step % 3 or None,
                       cpu=0.0005 * step, done=50.0 + step)


def row(step: int) -> dict:
    """The figures as a worker holds them: MetricsMeta's fields but `later`."""
    return {k: v for k, v in vars(figures(step)).items() if k != "later"}


def over_the_wire(message):
    codec = Codec("run", "secret")
    return protocol.validate(codec.decode(codec.encode(message)), Route.REPORT)


def test_every_held_step_arrives_with_its_figures_in_order():
    batch = MetricsBatch("worker1", Clock(), max_steps=16)
    for step in range(5):
        batch.add(0, step, row(step))
    message = batch.take()
    assert len(batch) == 0 and message.kind is Kind.METRICS and message.sender == "worker1"
    rows = protocol.metrics_rows(over_the_wire(message))
    assert [(e, s) for e, s, _ in rows] == [(0, s) for s in range(5)]
    assert [m for _, _, m in rows] == [figures(s) for s in range(5)]


def test_one_step_travels_as_before_without_rows():
    batch = MetricsBatch("worker0", Clock())
    batch.add(2, 7, row(7))
    message = over_the_wire(batch.take())
    assert (message.epoch, message.step, message.meta) == (2, 7, figures(7)) and message.meta.later == []


def test_the_batch_is_due_after_max_steps_or_max_age_and_says_how_long_to_wait():
    clock = Clock()
    batch = MetricsBatch("w", clock, max_steps=3, max_age_s=0.02)
    assert not batch.due() and batch.wait_ms(100) == 100      # nothing held: wait as long as you like
    batch.add(0, 0, row(0))
    assert not batch.due() and batch.wait_ms(100) == pytest.approx(20)
    clock.now += 0.015
    assert not batch.due() and batch.wait_ms(100) == pytest.approx(5)
    clock.now += 0.006
    assert batch.due() and batch.wait_ms(100) == 0
    batch.take()
    for step in range(3):
        batch.add(0, step, row(step))
    assert batch.due()                                         # full, however young


@pytest.mark.parametrize("row, field", [
    ({"epoch": 0, "busy": 0.1, "n": 4, "losses": {}, "correct": None}, r"later\[0\]"),        # no step
    ({"epoch": 0, "step": 1, "busy": "slow", "n": 4, "losses": {}, "correct": None}, "busy"),
    ({"epoch": 0, "step": 1, "busy": 0.1, "n": 4, "losses": {}, "correct": None, "later": []}, r"later\[0\]"),
    ({"epoch": 0, "step": 1, "busy": 0.1, "n": 4, "losses": {}, "correct": None, "extra": 1}, "meta"),
])
def test_a_malformed_row_is_refused_naming_it(row, field):
    message = over_the_wire(_with_rows([row]))
    with pytest.raises(MessageError, match=field):
        protocol.metrics_rows(message)


def _with_rows(rows):
    batch = MetricsBatch("w", Clock())
    batch.add(0, 0, row(0))
    message = batch.take()
    message.meta = MetricsMeta(**{**vars(message.meta), "later": rows})
    return message


def test_a_pipelined_run_records_every_step_with_finite_rates(tmp_path):
    cfg, data = small_run()
    out = tmp_path / "run"
    opts = PipelineOptions(workers="2", balance="flops", threads=1)
    assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    per_epoch = data.steps_per_epoch(cfg.batch_size)
    assert len(steps) == cfg.epochs * per_epoch
    assert [r["global_step"] for r in steps] == list(range(1, len(steps) + 1))
    assert all(math.isfinite(r["images_per_s"]) and 0 < r["images_per_s"] < 1e7 for r in steps)

"""Step records from out-of-order reports: a step is recorded once, with every local loss, when all workers
have reported it."""

from auglocal.engine.config import RunConfig
from auglocal.launch.run.progress import EpochTracker
from auglocal.workers.wire.protocol import EvalResultMeta, MetricsMeta


def tracker(workers: int, steps: list, epochs: list) -> EpochTracker:
    cfg = RunConfig(epochs=1, batch_size=4, lr=0.1, schedule="constant")
    return EpochTracker(cfg, 2, 1, workers, steps.append, epochs.append, lambda: len(steps))


def metrics(layer: int, correct: int | None = None) -> MetricsMeta:
    return MetricsMeta(0.01, 4, {str(layer): float(layer) + 0.5}, correct)


def test_top_report_first_then_upstream_ones_give_one_complete_row():
    """The ImageNet convention with --workers layer: the top stage is the cheapest and reports first."""
    steps, epochs = [], []
    t = tracker(3, steps, epochs)
    t.metrics(2, 0, 0, metrics(2, correct=3))
    t.metrics(0, 0, 0, metrics(0))
    assert steps == []
    t.metrics(1, 0, 0, metrics(1))
    (row,) = steps
    assert row.local_losses == {0: 0.5, 1: 1.5, 2: 2.5} and row.loss == 2.5 and row.accuracy == 75.0
    assert t.pending == {}                                   # nothing left behind (the old leak)


def test_steps_complete_in_order_and_the_epoch_closes_after_its_test_batches():
    steps, epochs = [], []
    t = tracker(2, steps, epochs)
    t.metrics(0, 0, 0, metrics(0))
    t.metrics(0, 0, 1, metrics(0))
    t.metrics(1, 0, 0, metrics(1, correct=4))
    t.metrics(1, 0, 1, metrics(1, correct=2))
    assert [(r.step, r.global_step) for r in steps] == [(0, 1), (1, 2)]
    t.expect_epoch(0, 2)
    assert epochs == []
    t.eval_result(0, EvalResultMeta(correct=1, n=4))
    (epoch,) = epochs
    assert epoch.train_accuracy == 75.0 and epoch.test_accuracy == 25.0
    assert t.snapshot().steps_done == 2

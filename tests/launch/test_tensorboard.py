"""The TensorBoard sink: scalars per record, restarts that do not duplicate steps, silence when off."""

import pytest
from auglocal.engine.trainer import EpochRecord, StepRecord
from auglocal.launch.report import tensorboard
from auglocal.launch.report.tensorboard import TensorBoardSink
from auglocal.launch.report.worker_usage import WorkerUsage

from tests.launch.pictures import tensorboard_scalars

pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard: pip install -e '.[dev]'")


def step(g: int, loss: float = 1.0) -> StepRecord:
    return StepRecord(epoch=0, step=g - 1, global_step=g, loss=loss, accuracy=50.0, lr=0.1, images_per_s=10.0,
                      local_losses={0: loss + 1, 3: loss}, images=8)


def test_records_become_scalars(tmp_path):
    sink = TensorBoardSink.open(tmp_path)
    sink.begin_attempt(0)
    for g in (1, 2, 3):
        sink.step(step(g, loss=float(g)))
    sink.workers(WorkerUsage(global_step=3, seconds=1.0, busy=[0.5, 1.0], queue=[None, 2]))
    sink.epoch(EpochRecord(epoch=0, train_loss=2.0, train_accuracy=40.0, test_accuracy=45.0, best_accuracy=45.0,
                           seconds=3.0))
    sink.checkpoint(1, {"global_step": 2})
    sink.close()
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert scalars["local_loss/layer_000"] == [(1, 2.0), (2, 3.0), (3, 4.0)]
    assert [s for s, _ in scalars["local_loss/layer_003"]] == [1, 2, 3]
    assert scalars["workers/busy/worker_0"] == [(3, 0.5)] and scalars["workers/queue/worker_1"] == [(3, 2.0)]
    assert "workers/queue/worker_0" not in scalars
    assert scalars["epoch/test_accuracy"] == [(3, 45.0)]           # at the step the epoch closed
    assert scalars["events/checkpoint"] == [(2, 1.0)]


def test_a_restart_purges_the_failed_attempts_later_steps(tmp_path):
    """Steps after the checkpoint are replayed by the next attempt: TensorBoard must show each once."""
    sink = TensorBoardSink.open(tmp_path)
    sink.begin_attempt(0)
    for g in (1, 2, 3, 4):
        sink.step(step(g, loss=10.0 + g))           # the failed attempt
    sink.restart("worker 1 died")
    sink.begin_attempt(2)                          # the checkpoint had 2 minibatches
    for g in (3, 4, 5):
        sink.step(step(g, loss=float(g)))
    sink.close()
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["train/loss"] == [(1, 11.0), (2, 12.0), (3, 3.0), (4, 4.0), (5, 5.0)]
    assert scalars["events/restarts"] == [(3, 1.0)]


def test_off_or_without_the_package_writes_nothing(tmp_path, monkeypatch, capsys):
    off = TensorBoardSink.open(tmp_path / "off", enabled=False)
    off.begin_attempt(0)
    off.step(step(1))
    off.close()
    assert not (tmp_path / "off").exists()
    monkeypatch.setattr(tensorboard, "_writer_class", lambda: None)
    missing = TensorBoardSink.open(tmp_path / "missing")
    missing.begin_attempt(0)
    missing.step(step(1))
    missing.close()
    assert not (tmp_path / "missing").exists() and not missing.enabled
    assert "pip install" in capsys.readouterr().err

"""Faults with --replicas 2: a dead replica worker ends the attempt, the run restarts every worker from the last
committed checkpoint (replica 0's layer files), and ends equal to the shard-mode oracle; --resume continues
with another K or another R from those files."""

import pytest
import torch
from auglocal.engine.config import build_network, optim_and_schedule
from auglocal.engine.trainer import SequentialTrainer
from auglocal.launch.run.checkpoints import CheckpointStore
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline
from auglocal.workers.runtime.faults import parse_fault

from tests.faults.support import (
    CHECKPOINT_EVERY,
    Reference,
    assert_complete,
    assert_no_orphan_workers,
    assert_same_weights,
    small_run,
    summary,
)


def shard_reference(replicas_at) -> Reference:
    """The sequential trainer over the small run's feed order, with `replicas_at(global_step)` shards per step."""
    torch.set_num_threads(1)
    cfg, data = small_run()
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed)
    steps = data.steps_per_epoch(cfg.batch_size)
    for g in range(cfg.epochs * steps):
        epoch, step = divmod(g, steps)
        trainer.replicas = replicas_at(g)
        x, y = data.train_batch(cfg.seed, epoch, step, cfg.batch_size)
        trainer.train_step(x, y, epoch, step)
    return Reference(model, list(aux), [], dict(trainer.stage.update_counts), cfg.epochs * steps)


@pytest.fixture(scope="module")
def two_shards() -> Reference:
    """The oracle of --replicas 2: the trainer's fit in shard mode (epoch records included)."""
    torch.set_num_threads(1)
    cfg, data = small_run()
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed, replicas=2)
    history = trainer.fit(data, cfg.epochs, cfg.batch_size)
    return Reference(model, list(aux), history, dict(trainer.stage.update_counts),
                     cfg.epochs * data.steps_per_epoch(cfg.batch_size))


def run(out, *, replicas=2, workers="2", fault=None, recovery="all", max_restarts=3, resume=False,
        worker_kind="process") -> int:
    cfg, data = small_run()
    opts = PipelineOptions(workers=workers, balance="flops", threads=1, checkpoint_every=CHECKPOINT_EVERY,
                           max_restarts=max_restarts, fault=parse_fault(fault) if fault else None, recovery=recovery,
                           replicas=replicas, worker_kind=worker_kind)
    return train_pipeline(cfg, data, opts, out=str(out), progress=False, resume=resume)


def test_fit_and_train_step_oracles_agree(two_shards):
    """The step-by-step reference of the last test is the trainer's fit in shard mode."""
    stepwise = shard_reference(lambda g: 2)
    for name, value in stepwise.model.state_dict().items():
        assert torch.equal(two_shards.model.state_dict()[name], value), name


@pytest.mark.parametrize("fault, worker, recovery", [
    ("kill:worker=3:step=8", 3, "all"),     # stage 1 of replica 1
    ("kill:worker=2:step=5", 2, "one"),     # stage 0 of replica 1, one-worker recovery asked: whole restart
])
def test_dead_replica_worker_restarts_everything_and_ends_equal(fault, worker, recovery, two_shards, tmp_path):
    cfg, data = small_run()
    out = tmp_path / "run"
    assert run(out, fault=fault, recovery=recovery) == 0
    s = assert_complete(two_shards, out, restarts=1)
    assert s["restarts"][0]["worker"] == worker and s["restarts"][0]["path"] == "all"
    assert "died with exit code -9" in s["restarts"][0]["error"]
    assert "--replicas > 1" in s["restarts"][0]["fallback"]
    assert s["replicas"] == 2 and s["recovery"].startswith("all")
    assert_no_orphan_workers()


def _stop_after_a_checkpoint(out) -> int:
    """A first run that dies at step 8 with no restart allowed; returns the committed checkpoint's step."""
    assert run(out, fault="kill:worker=1:step=8", max_restarts=0) == 1
    latest = CheckpointStore(out).verified_latest(report=lambda line: None)
    assert latest is not None
    return latest[1]["global_step"]


def test_resume_with_another_k_is_bitwise_the_oracle(two_shards, tmp_path):
    out = tmp_path / "run"
    _stop_after_a_checkpoint(out)
    assert run(out, workers="1", resume=True) == 0
    assert_same_weights(two_shards, out)
    assert set(summary(out)["updates"].values()) == {two_shards.steps}


def test_resume_with_another_r_continues_from_replica_zeros_files(tmp_path):
    out = tmp_path / "run"
    done = _stop_after_a_checkpoint(out)
    assert 0 < done < 12
    assert run(out, replicas=1, workers="2", resume=True) == 0
    expected = shard_reference(lambda g: 2 if g < done else 1)
    assert_same_weights(expected, out)
    assert summary(out)["replicas"] == 1
    assert_no_orphan_workers()


def test_nonfinite_skip_with_replicas_ends_equal_to_the_shard_oracle(tmp_path, capsys):
    """--lr 1e6 diverges: every replica reads the minibatch's reduced loss and gradients, so all of them skip the
    same module updates (and keep replica 0's buffers) as the sequential shard oracle does."""
    import json

    from auglocal.launch.cli import main

    from tests.faults.support import small_flags
    from tests.faults.test_divergence import DIVERGE, assert_bitwise_equal

    pipe, seq = tmp_path / "pipe", tmp_path / "seq"
    skip = ("--nonfinite", "skip", "--replicas", "2")
    assert main(small_flags(pipe, *DIVERGE, *skip, "--workers", "2")) == 0
    assert main(small_flags(seq, *DIVERGE, *skip, "--sequential", "--threads", "1")) == 0
    capsys.readouterr()
    skipped = json.loads((pipe / "summary.json").read_text())["skipped"]
    assert skipped and skipped == json.loads((seq / "summary.json").read_text())["skipped"]
    assert_bitwise_equal(pipe, seq)
    assert_no_orphan_workers()


@pytest.mark.slow
def test_hung_replica_worker_is_blamed_not_its_waiting_peer(two_shards, tmp_path):
    """Worker 3 hangs: its peer (worker 1) waits in the stage's reduction, silent too; the reduction's own
    timeout is longer than the heartbeat timeout, so the coordinator names the hung worker first."""
    cfg, data = small_run()
    out = tmp_path / "run"
    opts = PipelineOptions(workers="2", balance="flops", threads=1, checkpoint_every=CHECKPOINT_EVERY,
                           heartbeat_timeout=4.0, fault=parse_fault("hang:worker=3:step=8"), recovery="all",
                           replicas=2)
    assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    s = assert_complete(two_shards, out, restarts=1)
    assert s["restarts"][0]["worker"] == 3 and "hung" in s["restarts"][0]["error"]
    assert_no_orphan_workers()

"""Liveness that cannot lie: long evaluation passes and long blocked sends are not hangs; a real hang still
is, and it is blamed on the worker that hung, not on the ones waiting behind it."""

from __future__ import annotations

import json

import torch
from auglocal.engine.config import RunConfig, build_data, build_network, optim_and_schedule, resolve
from auglocal.engine.trainer import SequentialTrainer
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline
from auglocal.workers.runtime.faults import parse_fault

from tests.faults.support import SMALL, assert_complete, assert_no_orphan_workers, assert_same_weights, run_in_process


def short_run(**overrides):
    cfg = RunConfig(**{**SMALL, "max_steps": 4, **overrides})
    data = build_data(cfg)
    return resolve(cfg, data), data


def sequential(cfg, data):
    torch.set_num_threads(1)
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    trainer = SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed)
    trainer.fit(data, cfg.epochs, cfg.batch_size, max_steps=cfg.max_steps)
    return trainer


def run(cfg, data, out, fault: str, workers: str, timeout: float) -> dict:
    opts = PipelineOptions(workers=workers, balance="flops", threads=1, heartbeat_timeout=timeout,
                           max_restarts=0, fault=parse_fault(fault))
    assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    return json.loads((out / "summary.json").read_text())


def test_an_evaluation_pass_longer_than_the_heartbeat_timeout_is_not_a_hang(tmp_path):
    """Worker 0 (not the last: it reports nothing while it evaluates) computes each of 8 test batches 0.4 s
    longer, silently: 3.2 s per pass against a 2 s timeout. It heartbeats between batches."""
    cfg, data = short_run(test_size=64)
    assert data.num_test_batches(cfg.batch_size) == 8
    summary = run(cfg, data, tmp_path / "run", "slow-eval:worker=0:delay=0.4", "2", timeout=2.0)
    assert summary["restarts"] == []
    ref = sequential(*short_run(test_size=64))
    assert_same_weights(ref, tmp_path / "run")
    assert_no_orphan_workers()


def test_a_send_blocked_longer_than_the_heartbeat_timeout_is_not_a_hang(tmp_path):
    """Worker 1 takes 2.5 s per step (alive); worker 0 waits on its full link longer than the 2 s timeout. One
    test batch (test_size 8): the delay applies to test batches too, and the blocked sends are the training's."""
    cfg, data = short_run(test_size=8)
    summary = run(cfg, data, tmp_path / "run", "slow:worker=1:delay=2.5", "2", timeout=2.0)
    assert summary["restarts"] == [] and summary["max_in_flight"]["1"] == 2
    assert_same_weights(sequential(*short_run(test_size=8)), tmp_path / "run")
    assert_no_orphan_workers()


def test_a_hang_in_the_middle_is_blamed_on_the_hung_worker(reference, tmp_path):
    """Of three workers the middle one hangs: worker 0 blocks behind it (heartbeating), worker 2 waits for
    input (heartbeating); only worker 1 is silent, so it is the one blamed, and the restart ends equal."""
    out = tmp_path / "run"
    assert run_in_process(out, "hang:worker=1:step=5", workers="3", heartbeat_timeout=3.0) == 0
    s = assert_complete(reference, out, restarts=1)
    assert s["restarts"][0]["worker"] == 1 and "hung" in s["restarts"][0]["error"]
    assert_no_orphan_workers()

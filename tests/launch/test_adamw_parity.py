"""AdamW through the pipeline: bitwise the sequential trainer, also across a worker's death and restart (the
restarted workers read AdamW's step counts and moments back from the checkpoint's layer files)."""

import json
from dataclasses import replace

import pytest
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline
from auglocal.workers.runtime.faults import parse_fault

from tests.launch.test_parity import assert_same_weights, sequential_reference, small_run


def adamw_run(max_steps: int):
    cfg, data = small_run("auglocal", epochs=1, max_steps=max_steps, model="vit_tiny")
    return replace(cfg, optimizer="adamw", lr=1e-3), data


@pytest.mark.parametrize("workers, kind", [(2, None), (3, "thread")])
def test_adamw_pipeline_equals_sequential(workers, kind, tmp_path):
    cfg, data = adamw_run(max_steps=2)
    model, aux, _, updates = sequential_reference(cfg, data)
    out = tmp_path / "run"
    opts = PipelineOptions(workers=str(workers), balance="flops", threads=1, worker_kind=kind)
    assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    assert_same_weights(model, aux, out)
    assert json.loads((out / "config.json").read_text())["optimizer"] == "adamw"


def test_a_worker_killed_mid_run_restarts_from_adamws_saved_state(tmp_path):
    """Killed after step 3 with a checkpoint at step 2: the run ends bitwise equal only if AdamW's state (its
    step count drives the bias correction) came back from the checkpoint, not a fresh optimizer."""
    cfg, data = adamw_run(max_steps=3)
    model, aux, _, _ = sequential_reference(cfg, data)
    out = tmp_path / "run"
    opts = PipelineOptions(workers="2", balance="flops", threads=1, checkpoint_every=2, recovery="all",
                           fault=parse_fault("kill:worker=1:step=2"))
    assert train_pipeline(cfg, data, opts, out=str(out), progress=False) == 0
    assert_same_weights(model, aux, out)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["restarts"]) == 1 and "died with exit code -9" in summary["restarts"][0]["error"]

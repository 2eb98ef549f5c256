"""--cuda-graphs from the options to every worker's stage: on this CPU machine the real capture cannot happen, so
each worker says so in one line and trains eagerly, ending bitwise equal to the sequential reference (the
graphs themselves: tests/engine/test_graphed_step.py on CPU, tests/test_gpu.py on a GPU)."""

from __future__ import annotations

import pytest
import torch
from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline

from tests.faults.support import assert_same_weights, sequential_reference, small_run


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the capture succeeds: tests/test_gpu.py")
def test_workers_get_the_option_and_fall_back_in_one_line_each(tmp_path, capfd):
    reference = sequential_reference()
    cfg, data = small_run()
    opts = PipelineOptions(workers="2", balance="flops", threads=1, checkpoint_every=2, cuda_graphs=True,
                           tensorboard=False)
    assert train_pipeline(cfg, data, opts, out=str(tmp_path / "run"), progress=False) == 0
    assert_same_weights(reference, tmp_path / "run")
    lines = [line for line in capfd.readouterr().out.splitlines() if "cuda graphs" in line]
    assert sorted(line.split(":")[1].strip() for line in lines) == ["worker0", "worker1"], lines
    assert all("off: capture failed" in line and line.endswith("eager steps") for line in lines), lines

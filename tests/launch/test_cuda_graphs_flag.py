"""--cuda-graphs from the options to every worker's stage: on this CPU machine the real capture cannot happen, so
each worker says so in one line and trains eagerly, ending bitwise equal to the sequential reference (the
graphs themselves: tests/engine/test_graphed_step.py on CPU, tests/test_gpu.py on a GPU).

It runs in a fresh interpreter: the workers print to the stdout of the forkserver they fork from, which in
this test process is whichever descriptor was stdout when an earlier test started it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
from pathlib import Path

from auglocal.launch.run.pipeline import PipelineOptions, train_pipeline
from tests.faults.support import assert_same_weights, sequential_reference, small_run

if __name__ == "__main__":
    reference = sequential_reference()
    cfg, data = small_run()
    opts = PipelineOptions(workers="2", balance="flops", threads=1, checkpoint_every=2, cuda_graphs=True,
                           tensorboard=False)
    assert train_pipeline(cfg, data, opts, out=sys.argv[1], progress=False) == 0
    assert_same_weights(reference, Path(sys.argv[1]))
    print("bitwise equal")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the capture succeeds: tests/test_gpu.py")
def test_workers_get_the_option_and_fall_back_in_one_line_each(tmp_path):
    script = tmp_path / "graphs_on_cpu.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and "bitwise equal" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if "cuda graphs" in line]
    assert sorted(line.split(":")[1].strip() for line in lines) == ["worker0", "worker1"], lines
    assert all("off: capture failed" in line and line.endswith("eager steps") for line in lines), lines

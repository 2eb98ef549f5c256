"""--replicas under torchrun (slow: one node, three processes importing torch): rank 0 feeds the first worker
of each replica, each stage's replicas reduce in a gloo group that rendezvouses in rank 0's store, and the run
ends bitwise equal to the sequential shard oracle."""

import json
import os
import subprocess
import sys

import pytest
import torch
from auglocal.engine.config import RunConfig, build_data, build_network, optim_and_schedule, resolve
from auglocal.engine.precision import Kernels
from auglocal.engine.trainer import SequentialTrainer

from tests.launch.test_elastic import COMMON, REPO, TORCHRUN_VARS, free_port
from tests.launch.test_parity import assert_same_weights


@pytest.mark.slow
def test_two_replicas_under_torchrun_equal_the_shard_oracle(tmp_path):
    out, secret = tmp_path / "run", tmp_path / "secret"
    secret.write_text("test-secret-0123456789")
    secret.chmod(0o600)
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_NUM_THREADS": "1"}
    for name in TORCHRUN_VARS:
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "3",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--max-restarts", "0",
           "--monitor-interval", "0.5", "-m", "auglocal.launch.backends.elastic", "--", "--node-addr", "127.0.0.1",
           "--secret-file", str(secret), "--out", str(out), *COMMON, "--replicas", "2"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-4000:]
    assert "replicas: 2, 2 x 1 = 2 workers" in text
    cfg = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
    data = build_data(cfg)
    resolve(cfg, data)
    torch.set_num_threads(1)
    model, aux = build_network(cfg, data)
    optim, schedule = optim_and_schedule(cfg)
    SequentialTrainer(model, aux, optim, schedule, seed=cfg.seed, kernels=Kernels.from_config(cfg),
                      replicas=2).fit(data, cfg.epochs, cfg.batch_size, max_steps=cfg.max_steps)
    assert_same_weights(model, aux, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas"] == 2 and set(summary["updates"].values()) == {cfg.epochs * 4}

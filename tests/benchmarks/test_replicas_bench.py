"""benchmarks/replicas.py: its GPU prediction against the hand formula, and its quick mode end to end (slow)."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import replicas, replicas_predict

REPO = Path(__file__).resolve().parents[2]


def test_gpu_prediction_row_follows_the_models():
    from auglocal.engine.planning.costs import module_costs_flops
    from auglocal.engine.planning.replicas import param_bytes

    row = replicas_predict.gpu_rows("resnet32", 4, 32, 8)
    best, ddp = row["best"], row["ddp"]
    assert best.devices <= 8 and best.images_per_s >= row["replicas_only"].images_per_s
    # DDP BP: 8 GPUs on 32 images each, 3 x forward MACs at the assumed rate, plus what its reduction exposes
    bp_modules, x, y, _ = replicas_predict._modules("resnet32", "bp", 4, 2)
    compute = module_costs_flops(bp_modules, x, y)[0] * 32 / replicas_predict.GPU_MACS_PER_S
    assert ddp.compute_s == pytest.approx(compute)
    one_bucket = row["reduce"].seconds(param_bytes(bp_modules[0]), 8)     # ResNet-32's 1.9 MB: two buckets
    assert 0 < ddp.exposed_reduce_s <= one_bucket + row["reduce"].alpha_s
    assert ddp.images_per_s == pytest.approx(256 / (compute + ddp.exposed_reduce_s))


def test_the_missing_replicas_flag_is_detected():
    from auglocal.launch.cli import build_parser

    assert replicas.has_replicas_flag() == any(a.dest == "replicas" for a in build_parser()._actions)


@pytest.mark.slow
def test_quick_mode_measures_every_row_it_can_and_writes_the_report(tmp_path):
    out = tmp_path / "replicas.md"
    run = subprocess.run([sys.executable, "-m", "benchmarks.replicas", "--quick", "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=900, env={"PYTHONPATH": str(REPO),
                                                                           "PATH": "/usr/bin:/bin",
                                                                           "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    ddp = next(line for line in text.splitlines() if line.startswith("| DDP BP, 2 processes x 1 thread"))
    assert float(ddp.split("|")[2]) > 0
    k2 = next(line for line in text.splitlines() if line.startswith("| AugLocal d = 4, K = 2, R = 1"))
    assert float(k2.split("|")[2]) > 0 and float(k2.split("|")[4]) > 0
    r2 = next(line for line in text.splitlines() if line.startswith("| AugLocal d = 4, K = 1, R = 2"))
    assert ("to be measured after merge" in r2) != replicas.has_replicas_flag()
    assert "## 3. Predicted (simulator, not measured)" in text and "| resnet110 | 32 | 8 |" in text

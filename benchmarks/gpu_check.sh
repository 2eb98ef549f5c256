#!/usr/bin/env bash
# One script for a CUDA machine, within 10 minutes: the GPU tests, then ResNet-110 d=4 at batch 128 and 1024
# (sequential BP, sequential AugLocal, the pipeline with 2 and 4 workers sharing the GPU).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (figures go to OUT_DIR/gpu.md, default benchmarks/results)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0))"
python3 -m pytest -q -m gpu tests/ 2>&1 | tee "$out/gpu_tests.log"
timeout 480 python3 -m benchmarks.gpu --batch-sizes 128 1024 --steps 8 --out "$out/gpu.md"

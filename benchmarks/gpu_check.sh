#!/usr/bin/env bash
# One script for a CUDA machine: the GPU tests, then ResNet-110 d=4 at batch 128 and 1024 (sequential BP,
# sequential AugLocal, the pipeline with 2 and 4 workers sharing the GPU), then the memory format x precision
# table (contiguous/channels_last x fp32/bf16, 3 interleaved repeats) at batch 128 and 1024 (prepared without a
# GPU at hand: never run yet; budget about 4 + 5 minutes on top of the first part), and bf16 against fp32
# accuracy over 3 seeds; the single-GPU stream rows of thread workers go to OUT_DIR/gpu_streams.md (ResNet-20 AugLocal d=4, 2000 MNIST-5k images, 4 epochs; a few minutes).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (figures go to OUT_DIR/gpu.md, default benchmarks/results)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0))"
# deterministic algorithms for the GPU parity test of thread (stream) workers (tests/test_gpu.py)
AUGLOCAL_DETERMINISTIC=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 python3 -m pytest -q -m gpu tests/ 2>&1 \
    | tee "$out/gpu_tests.log"
# single-GPU stream rows (issue 13; prepared without a GPU, never run yet; about 3 minutes): ResNet-110 d=4
# batch 128, sequential BP and AugLocal, the pipeline with 1, 2, 4, 8 stream workers in one process
timeout 420 python3 -m benchmarks.gpu --batch-sizes 128 --steps 8 --workers --streams 1 2 4 8 \
    --out "$out/gpu_streams.md"
timeout 300 python3 -m benchmarks.transport --round-trips 500 --messages 20 --out "$out/transport_gpu.md"
timeout 480 python3 -m benchmarks.gpu --batch-sizes 128 1024 --steps 8 --out "$out/gpu.md"
timeout 300 python3 -m benchmarks.kernels --device cuda --model resnet110 --batch-size 128 --steps 8 \
    --half-steps 8 --repeats 3 --out "$out/kernels_gpu.md"
timeout 360 python3 -m benchmarks.kernels --device cuda --model resnet110 --batch-size 1024 --steps 4 \
    --half-steps 4 --repeats 3 --out "$out/kernels_gpu.md"
timeout 600 python3 -m benchmarks.precision_accuracy --device cuda:0 --train-size 2000 --test-size 1000 \
    --epochs 4 --batch-size 128 --out "$out/kernels_gpu.md"

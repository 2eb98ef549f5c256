#!/usr/bin/env bash
# The one-shot GPU check: one call on a CUDA machine, everything under OUT_DIR, at most 480 s of step budgets.
# It runs from source with the machine's own torch (PYTHONPATH=., the project is not installed). Steps, in order
# of value, each with its own time budget and its exit status in OUT_DIR/summary.md (a failing or timed-out step
# never stops the next; 124 = out of time), its output in OUT_DIR/<step>.log:
#   deps       (20 s)  install the wheels of benchmarks/wheels (benchmarks/fetch_wheels.sh; Python 3.12, e.g.
#                      pyzmq) that the machine lacks into a private temporary path, then import every module the
#                      steps need and name each that fails (OUT_DIR/imports.md; benchmarks/gpu_deps.py)
#   gpu_tests  (140 s) pytest -m gpu over tests/ (deterministic algorithms): tests/test_gpu.py's parity of stream
#                      workers, of two process workers sharing the GPU and of cuda-ipc worker ranks (a one-node
#                      torchrun) with the sequential trainer on the same GPU, every tensor of model.pt and aux.pt;
#                      the cuda-ipc rows of the transport contract; GPU-only unit checks, among them --cuda-graphs'
#                      replayed steps against eager ones (no row of its own: the budgets already add up to
#                      480 s) (OUT_DIR/gpu_tests.xml)
#   streams    (140 s) one GPU, ResNet-110 d=4, batch 128, 8 timed steps: sequential BP, sequential AugLocal,
#                      the pipeline with 1, 2, 4, 8 stream workers in one process: images/s, max_memory_allocated
#                      and the ratios over sequential AugLocal, in one run (OUT_DIR/gpu_streams.md)
#   transport  (40 s)  ipc vs cuda-ipc links: 16 KB latency and 8 MB bandwidth (OUT_DIR/transport_gpu.md)
#   fault      (75 s)  the single-GPU fault test: three process workers on the GPU, worker 1 killed mid-run,
#                      recovered alone, ending bitwise equal to the unfaulted GPU run (deterministic algorithms)
#   sanitizer  (65 s)  the stream-worker and cuda-ipc parity tests again under TORCH_CUDA_SANITIZER=1
# GPU_CHECK_DRY=1 runs every step on CPU with tiny sizes (the GPU tests with AUGLOCAL_GPU_TEST_DEVICE=cpu, the
# benchmark rows on ResNet-20 16x16, batch 8; the sanitizer step without the sanitizer, which needs CUDA, so the
# gpu_tests step leaves those two parity tests to it: each test runs once), after
# printing the step plan with its budgets (the GPU's: a dry step is stopped only at twice its budget); a default test
# (tests/benchmarks/test_gpu_check.py) runs it, so a bad flag, import or path fails on CPU, not on the GPU.
# The wheels travel with the call: the folder is gitignored, so a device run names it in `carry`.
# GPU_CHECK_STEPS="fault sanitizer" runs only the steps named (the plan still lists all; the others are rows
# "not run" in summary.md): a rerun of what failed costs only its own budget of the GPU's minutes (name deps too:
# it puts the carried wheels on the path).
# Usage: bash benchmarks/gpu_check.sh OUT_DIR      (GPU_CHECK_WHEELS=DIR: other wheel folder)
# Exit status: 0 when every step passed, 1 when one failed (see summary.md), 2 for bad usage or no GPU.
set -u   # deliberately no -e / pipefail: every step runs whatever the previous one did
cd "$(dirname "$0")/.." || exit 2
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR   (GPU_CHECK_DRY=1: every step on CPU, tiny sizes)" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
out="$(cd "$1" && pwd)"
dry="${GPU_CHECK_DRY:-0}"
wheels="${GPU_CHECK_WHEELS:-benchmarks/wheels}"
selected="${GPU_CHECK_STEPS:-deps gpu_tests streams transport fault sanitizer}"
for name in ${selected//,/ }; do
    case "$name" in
        deps|gpu_tests|streams|transport|fault|sanitizer) ;;
        *) echo "gpu_check: no step '$name' in GPU_CHECK_STEPS (deps gpu_tests streams transport fault sanitizer)" >&2
           exit 2 ;;
    esac
done
site="$(mktemp -d "${TMPDIR:-/tmp}/auglocal-gpu-site.XXXXXX")" || exit 2
trap 'rm -rf "$site"' EXIT
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export AUGLOCAL_DETERMINISTIC=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
pytest="python3 -m pytest -q -p no:cacheprovider -m gpu"
fault_test="tests/test_gpu.py::test_worker_killed_on_one_gpu_recovers_bitwise"
parity_select="stream_workers_equal or cuda_ipc_workers_equal"
parity_tests="tests/test_gpu.py -k '$parity_select'"

if [ "$dry" = 1 ]; then
    export AUGLOCAL_GPU_TEST_DEVICE=cpu CUDA_VISIBLE_DEVICES=""
    # the parity tests run once, in the sanitizer step (on CPU it is the same run without the sanitizer)
    gpu_tests_cmd="$pytest tests/test_gpu.py --deselect $fault_test -k 'not ($parity_select)'"
    gpu_tests_cmd+=" --junitxml $out/gpu_tests.xml"
    streams_cmd="python3 -m benchmarks.gpu --device cpu --model resnet20 --input-size 16 --batch-sizes 8 --steps 2"
    streams_cmd+=" --workers --streams 1 2 --out $out/gpu_streams.md"
    transport_cmd="python3 -m benchmarks.transport --transports ipc --round-trips 20 --messages 4 --no-plain"
    sanitizer="env -u TORCH_CUDA_SANITIZER"   # set at all, it initialises CUDA: on CPU, the same tests without it
else
    gpu_tests_cmd="$pytest tests/ --continue-on-collection-errors --deselect $fault_test"
    gpu_tests_cmd+=" --junitxml $out/gpu_tests.xml"
    streams_cmd="python3 -m benchmarks.gpu --batch-sizes 128 --steps 8 --workers --streams 1 2 4 8"
    streams_cmd+=" --out $out/gpu_streams.md"
    transport_cmd="python3 -m benchmarks.transport --transports ipc,cuda-ipc --round-trips 500 --messages 20 --no-plain"
    sanitizer="env TORCH_CUDA_SANITIZER=1"
fi
transport_cmd+=" --out $out/transport_gpu.md"

# name | budget (s) | command: the plan printed first is the plan that runs
steps=(
    "deps|20|python3 -m benchmarks.gpu_deps --wheels $wheels --target $site --report $out/imports.md"
    "gpu_tests|140|$gpu_tests_cmd"
    "streams|140|$streams_cmd"
    "transport|40|$transport_cmd"
    "fault|75|$pytest $fault_test"
    "sanitizer|65|$sanitizer $pytest $parity_tests"
)

total=0
echo "gpu_check plan$([ "$dry" = 1 ] && echo ' (GPU_CHECK_DRY=1: on CPU, tiny sizes)'), output in $out:"
for s in "${steps[@]}"; do
    IFS='|' read -r name budget cmd <<< "$s"
    total=$((total + budget))
    printf '  %-10s %4d s  %s\n' "$name" "$budget" "$cmd"
done
echo "  total      $total s of budgets"

if [ "$dry" != 1 ] && ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU here (GPU_CHECK_DRY=1 runs the steps on CPU)" >&2
    exit 2
fi
python3 -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) \
    if torch.cuda.is_available() else 'no GPU (dry run)')" > "$out/device.txt" 2>&1
cat "$out/device.txt"

summary="$out/summary.md"
{
    kind="$([ "$dry" = 1 ] && echo ' (dry run on CPU)')"
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)$kind: $(tail -n 1 "$out/device.txt")"
    echo
    echo "| step | budget (s) | exit | seconds | command |"
    echo "|---|---:|---:|---:|---|"
} > "$summary"
failed=0
for s in "${steps[@]}"; do
    IFS='|' read -r name budget cmd <<< "$s"
    if [[ " ${selected//,/ } " != *" $name "* ]]; then
        echo "| $name | $budget | not run | 0 | \`$cmd\` |" >> "$summary"
        echo "step $name: not run (GPU_CHECK_STEPS)"
        continue
    fi
    start=$SECONDS
    # TERM at budget - 5 s, KILL 5 s later: a step never runs past its budget. The dry run checks flags, imports
    # and paths, not time: on a loaded CPU a step may take longer than its GPU budget, so it gets twice that.
    limit=$((budget - 5))
    if [ "$dry" = 1 ]; then limit=$((2 * budget)); fi
    timeout -k 5 "$limit" bash -c "$cmd" > "$out/$name.log" 2>&1 < /dev/null
    rc=$?
    took=$((SECONDS - start))
    echo "| $name | $budget | $rc | $took | \`$cmd\` |" >> "$summary"
    note=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note=" (out of time)"; fi
    echo "step $name: exit $rc in ${took} s of ${budget} s$note"
    if [ "$rc" -ne 0 ]; then
        failed=$((failed + 1))
        tail -n 12 "$out/$name.log" | sed 's/^/    /'
    fi
done
echo "$failed of ${#steps[@]} steps failed; summary in $summary"
[ "$failed" -eq 0 ]

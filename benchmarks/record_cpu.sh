#!/usr/bin/env bash
# Re-run every CPU benchmark of issue 10 with the recording settings and rewrite benchmarks/results/
# {transport,memory,throughput,speedup}.md (the plot speedup_gpus.png lands next to them, not committed).
# Run it on a quiet machine, from anywhere: an estimated 11-13 minutes on an idle 2-core AMD EPYC (estimated
# from the per-step times of earlier quiet recordings; each benchmark prints its own time as it finishes).
#   bash benchmarks/record_cpu.sh            # all four
#   bash benchmarks/record_cpu.sh memory     # only the named ones (transport memory throughput speedup)
#   QUICK=1 RESULTS=/tmp/r bash benchmarks/record_cpu.sh   # smoke test: tiny settings, pages written elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
results=${RESULTS:-benchmarks/results}
mkdir -p "$results"
which=("$@")
[ ${#which[@]} -eq 0 ] && which=(transport memory throughput speedup)
start=$(date +%s)
echo "record_cpu: load before: $(cut -d' ' -f1-3 /proc/loadavg); running ${which[*]}"
for name in "${which[@]}"; do
  t0=$(date +%s)
  case "$name" in
    transport)  if [ -n "${QUICK:-}" ]; then args=(--round-trips 200 --messages 5)
                else args=(--round-trips 2000 --messages 50); fi
                python3 -m benchmarks.transport "${args[@]}" --out "$results/transport.md" ;;
    memory)     if [ -n "${QUICK:-}" ]; then args=(--models resnet32 --depths 4 --batch-size 16)
                else args=(--batch-size 256 --threads 2); fi
                python3 benchmarks/memory.py "${args[@]}" --out "$results/memory.md" ;;
    throughput) if [ -n "${QUICK:-}" ]; then args=(--steps 2 --repeats 1 --batch-size 16)
                else args=(--steps 8 --repeats 3); fi
                python3 -m benchmarks.throughput "${args[@]}" --out "$results/throughput.md" ;;
    speedup)    if [ -n "${QUICK:-}" ]; then args=(--models resnet20 --depths 4 --batch 8 --steps 2
                  --validate-models resnet20 --validate-workers 2 --round-trips 100)
                else args=(--batch 32 --timing-steps 2 --steps 8); fi
                python3 -m benchmarks.speedup "${args[@]}" --out "$results/speedup.md" ;;
    *) echo "record_cpu: unknown benchmark '$name' (transport, memory, throughput, speedup)" >&2; exit 2 ;;
  esac > "/tmp/record_cpu_$name.log" 2>&1 || { echo "record_cpu: $name failed, see /tmp/record_cpu_$name.log" >&2; exit 1; }
  echo "record_cpu: $name done in $(( $(date +%s) - t0 )) s"
done
echo "record_cpu: all done in $(( $(date +%s) - start )) s; load after: $(cut -d' ' -f1-3 /proc/loadavg)"

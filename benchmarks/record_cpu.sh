#!/usr/bin/env bash
# Re-run every CPU benchmark of issue 10 with the recording settings and rewrite benchmarks/results/
# {transport,memory,throughput,speedup}.md (the plot speedup_gpus.png lands next to them, not committed).
# Run it on a quiet machine, from anywhere: about 13 minutes on an idle 2-core AMD EPYC (see README).
#   bash benchmarks/record_cpu.sh            # all four
#   bash benchmarks/record_cpu.sh memory     # only the named ones (transport memory throughput speedup)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
results=benchmarks/results
which=("$@")
[ ${#which[@]} -eq 0 ] && which=(transport memory throughput speedup)
start=$(date +%s)
echo "record_cpu: load before: $(cut -d' ' -f1-3 /proc/loadavg); running ${which[*]}"
for name in "${which[@]}"; do
  t0=$(date +%s)
  case "$name" in
    transport)  python3 -m benchmarks.transport --round-trips 2000 --messages 50 --out "$results/transport.md" ;;
    memory)     python3 benchmarks/memory.py --batch-size 256 --threads 2 --out "$results/memory.md" ;;
    throughput) python3 -m benchmarks.throughput --steps 8 --repeats 3 --out "$results/throughput.md" ;;
    speedup)    python3 -m benchmarks.speedup --batch 32 --timing-steps 2 --steps 8 --out "$results/speedup.md" ;;
    *) echo "record_cpu: unknown benchmark '$name' (transport, memory, throughput, speedup)" >&2; exit 2 ;;
  esac > "/tmp/record_cpu_$name.log" 2>&1 || { echo "record_cpu: $name failed, see /tmp/record_cpu_$name.log" >&2; exit 1; }
  echo "record_cpu: $name done in $(( $(date +%s) - t0 )) s"
done
echo "record_cpu: all done in $(( $(date +%s) - start )) s; load after: $(cut -d' ' -f1-3 /proc/loadavg)"

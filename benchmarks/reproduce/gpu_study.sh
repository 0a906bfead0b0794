#!/usr/bin/env bash
# The full study on a lent CUDA machine: SHARDS parallel workers, results back under $OUT.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
export PRUNECLI_MNIST=${PRUNECLI_MNIST:-$PWD/.devdata/shared/data/mnist}
OUT=${OUT:-/tmp/study-out}; SHARDS=${SHARDS:-6}; W=$(mktemp -d); mkdir -p "$OUT"
start=$(date +%s)
for i in $(seq 0 $((SHARDS - 1))); do
  python3 benchmarks/reproduce/run.py --work "$W" --shard "$i/$SHARDS" --results "$OUT/results-$i.jsonl" \
    --device cuda > "$W/log-$i.txt" 2>&1 &
done
wait
wall=$(( $(date +%s) - start ))
device=$(python3 -c "import torch; print(torch.cuda.get_device_name(), 'torch', torch.__version__)")
printf '{"command": "SHARDS=%s bash benchmarks/reproduce/gpu_study.sh", "wall_s": %s, "device": "%s"}\n' \
  "$SHARDS" "$wall" "$device" > "$OUT/study.json"
tail -n 3 "$W"/log-*.txt
cat "$OUT/study.json"

#!/usr/bin/env bash
# The GPU checks of a session lent a CUDA machine: GPU tests, scoring benchmark, and the
# same SynFlow/SNIP runs on cpu and cuda compared mask for mask. Run from the repo root.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"; W=$(mktemp -d)
python3 -c "import torch, typer; print('torch', torch.__version__, 'typer', typer.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_saliency_vectors.py tests/test_topk_torch.py \
  tests/test_masking.py 2>&1 | tail -4
python3 -m prunecli init --arch resnet20 -o "$W/r20.safetensors" --quiet
python3 -m prunecli init --arch lenet-5 -o "$W/l5.safetensors" --quiet
TIMEFORMAT="%R s wall"
for d in cpu cuda; do
  echo -n "synflow resnet20, 100 iterations, $d: "
  time python3 -m prunecli prune "$W/r20.safetensors" -m synflow --arch resnet20 -s 0.98 --device $d \
    -o "$W/sf-$d" --quiet
  echo -n "snip lenet-5, 4 batches of 500, $d: "
  time python3 -m prunecli prune "$W/l5.safetensors" -m snip --arch lenet-5 --data prunecli/assets/mnist_demo.npz \
    --batch-size 500 --num-batches 4 -s 0.95 --device $d -o "$W/snip-$d" --quiet
done
python3 - "$W" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file
w = sys.argv[1]
for run in ("sf", "snip"):
    a, b = load_file(f"{w}/{run}-cpu/masks.safetensors"), load_file(f"{w}/{run}-cuda/masks.safetensors")
    bits = sum(int(np.unpackbits(a[n] ^ b[n]).sum()) for n in a)
    total = sum(a[n].size * 8 for n in a)
    print(f"{run}: cpu and cuda masks differ in {bits} of ~{total} bits")
PY
python3 benchmarks/bench_scoring.py --device cuda 2>&1 | tee "$OUT/bench_scoring_cuda.txt"

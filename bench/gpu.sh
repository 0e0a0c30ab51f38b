#!/usr/bin/env bash
# The GPU recipe, one command on a machine with a CUDA device:
#   bash bench/gpu.sh
# runs the embedding throughput benchmark (indexing pipeline vs bare forward), the HTTP load
# benchmark and a short embedder training on that device, and writes their reports, with the
# device named, to bench/results/gpu/<device>/. Without a CUDA device it stops at once, exit 2.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
export PYTHONPATH=${PYTHONPATH:-$PWD}

if ! device=$("$py" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit(3)
print(torch.cuda.get_device_name(0))'); then
  echo "bench/gpu.sh: no CUDA device here (torch.cuda.is_available() is False);" \
       "run it on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
  exit 2
fi
slug=$(printf '%s' "$device" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
out="bench/results/gpu/$slug"
mkdir -p "$out"
echo "bench/gpu.sh: CUDA device '$device'; reports in $out"
export RSIR_DEVICE=cuda RSIR_BENCH_RESULTS="$out"
{
  echo "device: $device"
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
} > "$out/device.txt"

echo "== embedding throughput (224 px, batch 64)"
# On a GPU torch runs the model (exports are CPU runtimes), so no export is made or compared.
"$py" bench/embedding_throughput.py --backbone efficientnet_lite0 --image-size 224 \
  --batch-size 64 --workers 4 8 --runtimes torch --exports
echo "== HTTP load"
"$py" bench/http_load.py --out "$out" --runtimes torch
echo "== short training (UCM, 20 images a class, 2 epochs)"
started=$(date +%s)
"$py" -m rsir train --dataset ucm --per-class 20 --max-epochs 2 --batch-size 16 \
  --out "$out/train/embedder.pt" 2>&1 | tee "$out/train.log"
echo "training wall time: $(( $(date +%s) - started )) s on $device" | tee -a "$out/train.log"

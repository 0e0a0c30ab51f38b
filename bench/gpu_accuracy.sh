#!/usr/bin/env bash
# Accuracy benchmarks on a CUDA machine, one command (issue 7's GPU protocol):
#   RSIR_DATA_ROOT=/path/to/data bash bench/gpu_accuracy.sh [OUT_DIR]
# Three runs share the GPU at once (each is small-batch and launch-bound, so they overlap):
#   1. retrieval, rsir's CPU recipe (Lite0, 192 px, 3 frozen stages, 4 classification epochs),
#      UCM and NWPU-RESISC12, seeds 0 1 2, every refinement, generalisation both ways;
#   2. retrieval, full fine-tuning (nothing frozen, 224 px, classification then contrastive
#      hard-negative epochs), seed 0;
#   3. scene classifiers (DDRL-AM, PCL, LAFE, plain baselines), all images, native 224 px,
#      nothing frozen, E = 8 epochs with a cosine schedule, seeds 0 1 2, one process per
#      dataset and seed (6 side by side; about 7.5 minutes on an H100 when run alone).
# Each run has a time limit (RSIR_GPU_BENCH_LIMIT seconds, default 480) and keeps what it has
# measured when it is cut; reports (JSON + markdown) land in OUT_DIR with the device named.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
export RSIR_DATA_ROOT=${RSIR_DATA_ROOT:-$(cd .. && pwd)/shared/data}
limit=${RSIR_GPU_BENCH_LIMIT:-480}
epochs=${RSIR_GPU_CLASSIFIER_EPOCHS:-8}
if ! device=$("$py" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit(3)
print(torch.cuda.get_device_name(0))'); then
  echo "bench/gpu_accuracy.sh: no CUDA device here (torch.cuda.is_available() is False)" >&2
  exit 2
fi
out=${1:-bench/results/gpu/$(printf '%s' "$device" | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')}
mkdir -p "$out"
export RSIR_BENCH_RESULTS="$out"
echo "bench/gpu_accuracy.sh: '$device', limit ${limit} s per run, reports in $out"

timeout "$limit" "$py" bench/retrieval.py --device cuda --workers 4 --seeds 0 1 2 \
  --name retrieval_cpu_recipe --work /tmp/rsir-gpu-cpu-recipe \
  --note "Run on $device (bench/gpu_accuracy.sh): the CPU recipe's figures for all seeds." \
  > "$out/retrieval_cpu_recipe.log" 2>&1 &
r1=$!
timeout "$limit" "$py" bench/retrieval.py --device cuda --workers 6 --seeds 0 \
  --freeze-stages 0 --image-size 224 --ce-epochs 6 --metric-epochs 2 --lr 5e-4 \
  --batch-size 32 --name retrieval_full_finetune --work /tmp/rsir-gpu-full \
  --note "Run on $device (bench/gpu_accuracy.sh): full fine-tuning, nothing frozen." \
  > "$out/retrieval_full_finetune.log" 2>&1 &
r2=$!
"$py" bench/classifiers.py --parallel --limit-s "$limit" --image-size 0 --freeze-stages 0 \
  --ucm-per-class 0 --nwpu-per-class 0 --epochs "$epochs" --batch-size 64 --seeds 0 1 2 \
  --schedule cosine --runs pcl plain-pcl lafe plain-lafe plain-2E ddrl-am \
  --threads 2 --workers 2 --out "$out/classifiers" --data-root "$RSIR_DATA_ROOT" \
  > "$out/classifiers.log" 2>&1 &
r3=$!
status=0
for pid in $r1 $r2 $r3; do wait "$pid" || status=$?; done
echo "bench/gpu_accuracy.sh: done (last non-zero exit: $status; 124 = cut at the limit)"
exit "$status"

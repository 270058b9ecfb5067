#!/usr/bin/env bash
# A short check for a GPU machine (a few minutes on one modern GPU): the benchmark, then one
# 24-epoch training with the data and augmentation on the GPU (--augment gpu), LRMAX/LRMIN
# found by the range test, and its report.
#
#   jobs/gpu_check.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR: a cifar-10-batches-py folder or an image tree (train/<class>/, test/<class>/);
# leave it out only where torchvision can download CIFAR-10. Everything lands in OUT_DIR
# (default ./gpu-check): BENCHMARKS.md, bench.json, the run folder and its report.
set -euo pipefail
DATA=${1:?usage: jobs/gpu_check.sh DATA_DIR [OUT_DIR]}
OUT=$(realpath -m "${2:-gpu-check}")
mkdir -p "$OUT"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

start=$(date +%s)
python -m raycifar.bench --data-dir "$DATA" --subset 10240 --repeats 3 \
    --out "$OUT/BENCHMARKS.md" --json "$OUT/bench.json"
python -m raycifar.train --data-dir "$DATA" --augment gpu --lr auto --lr-min-rule onset \
    --storage-path "$OUT/runs" --name fast-24 2>&1 | tee "$OUT/train.log"
python jobs/report.py "$OUT/runs/fast-24" --out "$OUT/report"
echo "gpu_check: done in $(( $(date +%s) - start )) s; see $OUT"

#!/usr/bin/env bash
# A short check for a GPU machine: one 24-epoch training with the data and augmentation on the
# GPU (--augment gpu), LRMAX/LRMIN found by the range test; where its time went (issue 20's
# three figures: the command, the steps, the time outside them, and the start-up's phases);
# its accuracy against the earlier H200 run; its report; torch.compile's two modes on the
# fast path; then the benchmark.
#
#   jobs/gpu_check.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR: a cifar-10-batches-py folder or an image tree (train/<class>/, test/<class>/);
# leave it out only where torchvision can download CIFAR-10. Everything lands in OUT_DIR
# (default ./gpu-check): the run folder and its report, split.md, compare.md,
# compile-<mode>.md/.json, BENCHMARKS.md and bench.json.
#
# Measured on one H200 (results/gpu-h200/, 2026-11-29, these steps run one by one): the
# training 128 s from the command's start (Ray's start, data load, range test, 24 epochs: 17 s
# of training, 56 s with evaluation and checkpoints), the report 10 s, the benchmark 197 s
# (commit 70827b5, whose option variants still waited for the albumentations loader): 5.6
# minutes in all, over the 5 the check was meant to take; the training's answer comes first.
set -euo pipefail
DATA=${1:?usage: jobs/gpu_check.sh DATA_DIR [OUT_DIR]}
OUT=$(realpath -m "${2:-gpu-check}")
mkdir -p "$OUT"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

start=$(date +%s)
python -m raycifar.train --data-dir "$DATA" --augment gpu --lr auto --lr-min-rule onset \
    --storage-path "$OUT/runs" --name fast-24 2>&1 | tee "$OUT/train.log"
echo "gpu_check: the training command took $(( $(date +%s) - start )) s (goal: <= 45 s)"
# Issue 20's figures: command start to finished run folder, the steps' time (goal <= 15 s),
# the time outside the steps from the first epoch to the last checkpoint (goal <= 15% of it)
python -m raycifar.bench --split "$OUT/runs/fast-24" | tee "$OUT/split.md"
# Accuracy against the H200 run of 2026-11-29 (results/gpu-h200/fast-24), paired
if [ -d results/gpu-h200/fast-24 ]; then
    python jobs/compare.py results/gpu-h200/fast-24 "$OUT/runs/fast-24" --names before,now \
        --tolerance 0.3 --out "$OUT/compare.md" && cat "$OUT/compare.md"
fi
python jobs/report.py "$OUT/runs/fast-24" --out "$OUT/report"
echo "gpu_check: training, split, comparison and report done in $(( $(date +%s) - start )) s"
# The rest of the step (issue 20): torch.compile on the fast path, inductor's default mode and
# CUDA graphs (reduce-overhead); each against the same loop uncompiled, warm epochs, with how
# much longer the compiling epoch took (compile_extra)
for mode in default reduce-overhead; do
    python -m raycifar.bench --data-dir "$DATA" --augment gpu --subset 10240 --repeats 2 \
        --only plain,plain_compile --compile-mode "$mode" \
        --out "$OUT/compile-$mode.md" --json "$OUT/compile-$mode.json"
done
echo "gpu_check: compile trials done in $(( $(date +%s) - start )) s"
python -m raycifar.bench --data-dir "$DATA" --subset 10240 --repeats 3 \
    --out "$OUT/BENCHMARKS.md" --json "$OUT/bench.json"
echo "gpu_check: done in $(( $(date +%s) - start )) s; see $OUT"

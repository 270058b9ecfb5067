#!/usr/bin/env bash
# The README's smoke run (`--config smoke`: 2,048 training images, 2 epochs, a 20-batch range
# test) once per tracker, each into a local store, then read back (readback.txt).
set -euo pipefail
DATA=${1:?the dev image tree, e.g. /tmp/data/cifar10-dev}
OUT=${2:-/tmp/ev}
mkdir -p "$OUT/wandb-dir"
cd "$OUT"
MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" python -m raycifar.train --config smoke \
    --data-dir "$DATA" --storage-path "$OUT/runs" --name smoke-mlflow --tracker mlflow
WANDB_MODE=offline WANDB_DIR="$OUT/wandb-dir" python -m raycifar.train --config smoke \
    --data-dir "$DATA" --storage-path "$OUT/runs" --name smoke-wandb --tracker wandb

#!/usr/bin/env bash
# $1: label (before|after), $2: repo to run from
set -e
export RAY_AUTH_MODE=disabled
cd "$2"
/usr/bin/time -f "wall %e s" env PYTHONPATH="$2" python -m raycifar.train --data-dir /tmp/dev/cifar10-dev \
  --cache-dir /tmp/split-cache --subset 4096 --epochs 4 --peak-epoch 1 --augment gpu \
  --lr-max 0.1 --lr-min 0.004 --num-workers 1 --cpus-per-worker 2 \
  --storage-path /tmp/split-runs --name "$1" 2>&1 | grep -E "^\[raycifar\] (done|data|LRMAX)|wall|epoch [0-9]+/4 lr" | cut -c1-200

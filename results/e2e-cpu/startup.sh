#!/usr/bin/env bash
# The start-up split on this CPU, before and after the start-up cuts, with the range
# test in the command (what the GPU goal measures). Run from the repository root:
#   results/e2e-cpu/startup.sh
# before: commit f6db08f (the timeline) with the two cuts committed ahead of it reverted
#         (c05a703 forked decode / one-bincount mean-std / name-sorted listing, c2bf982
#         albumentations imported lazily) and the range test still fed by albumentations;
# after:  this checkout (the range test fed from DeviceBatches with --augment gpu as well).
# Each command gets a cold decode cache of its own first (rm -rf), then runs twice: a
# first-run (cold cache) and a repeat (warm cache); `bench --split` of each run folder.
set -euo pipefail
OUT=${OUT:-/tmp/startup-split}
DATA=${DATA:-/tmp/dev/cifar10-dev}
export RAY_AUTH_MODE=disabled
rm -rf "$OUT" && git worktree prune && mkdir -p "$OUT"
git worktree add -f -q "$OUT/before-tree" f6db08f
git -C "$OUT/before-tree" -c user.name=x -c user.email=x@x revert --no-edit c2bf982 c05a703 > /dev/null
for label in before after; do
    tree=$PWD; [ "$label" = before ] && tree="$OUT/before-tree"
    for pass in cold warm; do
        [ "$pass" = cold ] && rm -rf "$OUT/cache-$label"
        (cd "$tree" && PYTHONPATH="$tree" python -m raycifar.train --data-dir "$DATA" \
            --cache-dir "$OUT/cache-$label" --subset 4096 --epochs 4 --peak-epoch 1 \
            --augment gpu --num-steps 20 --num-workers 1 --cpus-per-worker 2 \
            --storage-path "$OUT/runs" --name "$label-$pass" > "$OUT/$label-$pass.log" 2>&1)
        PYTHONPATH=$PWD python -m raycifar.bench --split "$OUT/runs/$label-$pass" \
            > "$OUT/split-$label-$pass.md"
        grep -h "done in" "$OUT/$label-$pass.log"
    done
done
git worktree remove --force "$OUT/before-tree"

# The fast path's accuracy check (dev-full's accuracy within 0.3 points): the full 24-epoch dev
# run again, with the training augmentation done batch-wise on the training device (--augment gpu;
# the CPU here) instead of albumentations, and everything else as in results/dev-full: the same
# seed, and the same LRMAX 0.0955 / LRMIN 0.00145, read from dev-full's range test (--lr-from) so
# that the augmentation is the only difference. Run from the repository root. At ~40 images/s the
# run is done in pieces: each piece is the same command, which resumes from the last epoch
# checkpoint in /work/runs/dev-full-gpuaug (--stop-after-epoch only decides where a piece ends; 24
# runs to the end).
tar -xzf ../shared/data/cifar10-dev.tar.gz -C /tmp
export RAY_AUTH_MODE=disabled
python -m raycifar.train --data-dir /tmp/cifar10-dev --storage-path /work/runs \
    --name dev-full-gpuaug --augment gpu --lr-from results/dev-full --stop-after-epoch 24
# Attempt 1 read the LRs from /work/runs/dev-full and got through epoch 20 in
# three pieces (--stop-after-epoch 4, 12, 20); its run folder was lost with the machine.
# Attempt 2 started from scratch with this command and ran epochs 1-8 (stopped with Ctrl-C
# in epoch 9), then resumed and ran epochs 9-14 (stopped with Ctrl-C in epoch 15); a next
# piece would be this command again.
#
# After the last piece (epoch 24), from the repository root: the run's small files (its
# predictions.npz too, ~1-2 MB, for a paired comparison later), the report, and the comparison
# with dev-full (unpaired: dev-full's predictions.npz was lost with attempt 1).
#   R=/work/runs/dev-full-gpuaug; D=results/dev-full-gpuaug
#   cp $R/metrics.csv $R/summary.json $R/config.json $R/lr_steps.csv $R/predictions.npz $D/
#   python jobs/report.py $R --out $D
#   python jobs/compare.py results/dev-full $D --names albumentations,gpu --tolerance 0.3 --out $D/compare.md

# The fast path's accuracy check (issue #7): the full 24-epoch dev run again, with the training
# augmentation done batch-wise on the training device (--augment gpu; the CPU here) instead of
# albumentations, and everything else as in results/dev-full: the same seed, and the same LRMAX
# 0.0955 / LRMIN 0.00145, read from dev-full's range test (--lr-from) so that the augmentation
# is the only difference. Run from the repository root. At ~40 images/s the run is done in
# pieces across working sessions: each piece is the same command, which resumes from the last
# epoch checkpoint in /work/runs/dev-full-gpuaug (--stop-after-epoch only decides where a
# piece ends).
tar -xzf ../shared/data/cifar10-dev.tar.gz -C /tmp
export RAY_AUTH_MODE=disabled
python -m raycifar.train --data-dir /tmp/cifar10-dev --storage-path /work/runs \
    --name dev-full-gpuaug --augment gpu --lr-from /work/runs/dev-full --stop-after-epoch 4
# Pieces: epochs 1-4 (session 6, 2026-11-29 11:30-12:55, this command); epochs 5-12 (session 7,
# 13:12-15:55, the same command with --stop-after-epoch 12); epochs 13-20 (session 8,
# 16:12-18:56, --stop-after-epoch 20). Last piece: the same command with --stop-after-epoch 24.

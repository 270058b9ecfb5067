# The full 24-epoch run on the 45,000 dev training images, LRMAX and LRMIN found (--lr auto).
# Run from the repository root. This 2-core CPU trains ~40 images/s, so the run is done in
# pieces: each piece is the same command, which resumes from the last
# epoch checkpoint in /work/runs/dev-full (--stop-after-epoch only decides where a piece ends).
tar -xzf ../shared/data/cifar10-dev.tar.gz -C /tmp
export RAY_AUTH_MODE=disabled

# 1. The range test as a Tune run (30 minutes, commit b5bffe2;
#    100 steps of 512 images, 1e-4 -> 10, exponential).
python -m raycifar.tune lr-find --data-dir /tmp/cifar10-dev --storage-path /work/runs --name dev-full

# 2. Training with what it found (started right after it, 5f27f8f plus the edits committed
#    as 442ea67 and eb588b4). The folder already held that
#    sweep, so --lr auto read it again with --method minimum (the default since 442ea67) and
#    --lr-min-rule onset instead of sweeping a second time: LRMAX 0.0955, LRMIN 0.00145.
python -m raycifar.train --data-dir /tmp/cifar10-dev --storage-path /work/runs --name dev-full \
    --lr auto --lr-min-rule onset --stop-after-epoch 6
# The pieces: epochs 1-3 (stopped with Ctrl-C after epoch 3's checkpoint), then
# epochs 4-8 (the same command with --stop-after-epoch 24, stopped with Ctrl-C after
# epoch 8's checkpoint), epoch 9 (--stop-after-epoch 9), epochs 10-16 (the same
# command with --stop-after-epoch 24, stopped with Ctrl-C after epoch 16's checkpoint), and
# epochs 17-24 (the same command with --stop-after-epoch 24).
# Since f8413ed, --lr auto --lr-min-rule onset are the defaults.

# 3. The report, after epoch 24.
python jobs/report.py /work/runs/dev-full --out results/dev-full

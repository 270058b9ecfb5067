# The run in this folder: 24 epochs, defaults except the data, the subset and fp32
# (this CPU has no native bf16: bf16 autocast runs ~20x slower than fp32 here).
tar -xzf ../shared/data/cifar10-dev.tar.gz -C /tmp
RAY_AUTH_MODE=disabled python -m raycifar.train --data-dir /tmp/cifar10-dev --subset 5000 \
    --precision fp32 --storage-path /work/runs --name dev-subset5000
python jobs/report.py /work/runs/dev-subset5000 --out results/dev-subset5000

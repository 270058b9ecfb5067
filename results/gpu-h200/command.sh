# What ran on the lent H200 machine (16 CPU cores; commit 70827b5; no network there, and no
# Ray or albumentations in its Python 3.12 / torch 2.11 image, so both travelled with the tree).
#
# 1. Prepared here, in an ignored folder .gpucarry/ of the checkout (54 MB, under the tool's
#    64 MiB for what travels): Ray 2.60.0's cp312 wheel is 79 MB, so it went unpacked without
#    ray/jars (Java) and the dashboard's *.js.map files, as an xz tarball (31 MB); the other
#    missing packages as wheels (8 MB); the dev data tarball (16 MB).
#      pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux2014_x86_64 ... ray==2.60.0
#      unzip ray-2.60.0-*.whl -d slim; rm -rf slim/ray/jars; find slim -name '*.js.map' -delete
#      tar -C slim -cf - . | xz -6 > .gpucarry/ray-slim.tar.xz
#      pip download (same flags) -d .gpucarry/whl jsonschema==4.26.0 \
#          jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0 \
#          tensorboardX==2.6.5 pydantic==2.13.4 pydantic_core==2.46.4 annotated-types==0.7.0 \
#          typing-inspection==0.4.2 albumentations==2.0.8 albucore==0.0.24 simsimd==6.5.16 \
#          stringzilla==5.3.2 typing_extensions==4.15.0
#      cp ../shared/data/cifar10-dev.tar.gz .gpucarry/
#    Without ray[default]'s extras no dashboard ran there, so the train logs carry Ray Train's
#    "State API unavailable" tracebacks; they did not touch training.
#
# 2. First call (device tool: run `bash .gpucarry/device.sh`, carry .gpucarry, timeout 600 s):
#    the script below. The bench in it hit its 160 s limit (steps-call1.txt).
# 3. Second call, on the still-warm machine: the same install lines, then the bench alone,
#    `timeout -s INT 300`: done in 197 s (BENCHMARKS.md, bench.json, bench.log).
# 4. Here: `python jobs/report.py` on both run folders and `python jobs/compare.py` (compare.md;
#    the same figures as the copy made on the device).

# Run on the lent H200 machine from the repository root (not part of the project: it installs
# the carried wheels and data, then runs jobs/gpu_check.sh's commands, training first).
set -uo pipefail
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
O=${OUT:?}
G=/tmp/gc
mkdir -p "$G" /tmp/site
step() { echo "[$(date +%T)] $*" | tee -a "$O/steps.txt"; }
pack() { tar -czf "$O/gc.tar.gz" -C "$G" --exclude='checkpoint_*' --exclude='*.pt' . 2>/dev/null; }
step start
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpucarry/whl/*.whl || { step "pip failed"; exit 3; }
tar -xJf .gpucarry/ray-slim.tar.xz -C /tmp/site || { step "ray untar failed"; exit 4; }
tar -xzf .gpucarry/cifar10-dev.tar.gz -C /tmp || { step "data untar failed"; exit 5; }
export PYTHONPATH=/tmp/site:$PWD
step installed
python3 -c "import sys, ray, ray.train.torch, ray.tune, albumentations, torch, raycifar
print(sys.version.split()[0], 'ray', ray.__version__, 'torch', torch.__version__,
      'albumentations', albumentations.__version__, torch.cuda.get_device_name())" \
    2>&1 | tee "$G/versions.txt"
[ "${PIPESTATUS[0]}" = 0 ] || { step "imports failed"; cp "$G/versions.txt" "$O/"; exit 6; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$G/gpu.txt"
D=/tmp/cifar10-dev

step "fast-24: --augment gpu, --lr auto --lr-min-rule onset"
timeout -s INT 200 python3 -m raycifar.train --data-dir $D --augment gpu --lr auto \
    --lr-min-rule onset --storage-path "$G/runs" --name fast-24 > "$G/train-fast.log" 2>&1
step "fast-24 rc=$?"; pack
python3 jobs/report.py "$G/runs/fast-24" --out "$G/report-fast" > "$G/report-fast.log" 2>&1
step "report rc=$?"; pack

if [ -f "$G/runs/fast-24/lr_finder.json" ] || ls "$G/runs/fast-24"/lr* >/dev/null 2>&1; then
    LR=(--lr-from "$G/runs/fast-24")
else
    LR=(--lr auto --lr-min-rule onset)
fi
step "albu-24: albumentations, 12 loader workers, ${LR[*]}"
timeout -s INT 170 python3 -m raycifar.train --data-dir $D --augment albumentations \
    --loader-workers 12 "${LR[@]}" --storage-path "$G/runs" --name albu-24 \
    > "$G/train-albu.log" 2>&1
step "albu-24 rc=$?"; pack
python3 jobs/compare.py "$G/runs/albu-24" "$G/runs/fast-24" --names albumentations,gpu \
    --tolerance 0.3 --out "$G/compare.md" > "$G/compare.log" 2>&1
step "compare rc=$?"; pack

step "bench: --subset 10240 --repeats 3"
timeout -s INT 160 python3 -m raycifar.bench --data-dir $D --subset 10240 --repeats 3 \
    --out "$G/BENCHMARKS.md" --json "$G/bench.json" > "$G/bench.log" 2>&1
step "bench rc=$?"; pack
step done

#!/usr/bin/env bash
# The device check: what the GPU path does on a real GPU, measured the same way every time.
#
#   bash jobs/gpu_check.sh [--part 1|2|all] [--carry DIR] DATA [OUT_DIR]   on a GPU machine
#   bash jobs/gpu_check.sh --rehearse DATA [OUT_DIR]                       the same, on a CPU
#
# DATA: an image tree (train/<class>/, test/<class>/), a cifar-10-batches-py folder, or a
# .tar.gz of either (extracted under /tmp). OUT_DIR: where everything measured goes (default:
# $OUT, which the device tool sets, else ./gpu-check). Needs only bash and python3 with torch:
# --carry DIR installs what else is missing from DIR (made by jobs/gpu_carry.sh: whl/*.whl and
# ray-slim.tar.xz) into /tmp/gpu-check-site, with no network; the package itself is this
# checkout, on PYTHONPATH.
#
# Part 1 (one device call): doctor, one default 24-epoch training with --augment gpu (range
# test included), where its time went (split.md), its figures side by side with the H200 run in
# results/gpu-h200/fast-24 (figures.md), the paired accuracy comparison with it (compare.md),
# the report. Part 2 (a second call): torch.compile's default and reduce-overhead modes on the
# fast path, then the benchmark. Each part stops its stages so that it ends within
# GPU_CHECK_SECONDS (default 540: one device call is at most 600 s). --part all runs both.
#
# --rehearse runs every stage on this machine's CPU, on a tiny subset with a stub nvidia-smi,
# so that a broken check fails here (tests/test_gpu_check.py runs it in CI), not on the lent
# machine. Exit status: 0 when every stage did.
set -uo pipefail

PART=all CARRY="" REHEARSE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --part) PART=${2:?--part 1, 2 or all}; shift 2 ;;
        --carry) CARRY=$(realpath "${2:?--carry DIR}"); shift 2 ;;
        --rehearse) REHEARSE=1; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
case "$PART" in 1|2|all) ;; *) echo "gpu_check: --part $PART: use 1, 2 or all" >&2; exit 2 ;; esac
DATA=${1:?usage: jobs/gpu_check.sh [--part 1|2|all] [--carry DIR] [--rehearse] DATA [OUT_DIR]}
OUT_DIR=$(realpath -m "${2:-${OUT:-gpu-check}}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_SECONDS:-540}
START=$(date +%s)
FAILED=0
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
export RAY_USAGE_STATS_ENABLED=0

note() { echo "[gpu_check $(date +%T) +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT_DIR/steps.txt"; }

# stage NAME SECONDS CMD...: run CMD with its output in NAME.log (and on the screen), stopped
# by SIGINT (Ray and raycifar end cleanly on it) after SECONDS or when the part's time is up
stage() {
    local name=$1 limit=$2 left rc
    shift 2
    left=$(( BUDGET - ($(date +%s) - START) - 5 ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 10 ]; then
        note "$name skipped: the part's ${BUDGET}s are used up"; FAILED=1; return 1
    fi
    note "$name (at most ${limit}s): $*"
    timeout -s INT -k 15 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    rc=$?
    tail -n 40 "$OUT_DIR/$name.log"
    note "$name rc=$rc"
    [ "$rc" = 0 ] || FAILED=1
    return "$rc"
}

# --- what travels: packages from the carry folder, data from a tarball ----------------------
if [ -n "$CARRY" ]; then
    SITE=/tmp/gpu-check-site
    if [ ! -f "$SITE/.installed" ]; then  # a warm machine keeps it between the two parts
        mkdir -p "$SITE"
        shopt -s nullglob
        wheels=("$CARRY"/whl/*.whl)
        shopt -u nullglob
        if [ ${#wheels[@]} -gt 0 ]; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --target "$SITE" "${wheels[@]}" || { note "pip from $CARRY failed"; exit 3; }
        fi
        if [ -f "$CARRY/ray-slim.tar.xz" ]; then
            tar -xJf "$CARRY/ray-slim.tar.xz" -C "$SITE" || { note "ray untar failed"; exit 3; }
        fi
        touch "$SITE/.installed"
    fi
    export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    note "installed from $CARRY into $SITE"
else
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ "$DATA" == *.tar.gz || "$DATA" == *.tgz ]]; then
    unpacked=/tmp/gpu-check-data
    if [ ! -d "$unpacked" ]; then
        mkdir -p "$unpacked" && tar -xzf "$DATA" -C "$unpacked" || { note "untar $DATA failed"; exit 3; }
    fi
    found=$(find "$unpacked" -maxdepth 3 \( -type d -name train -o -type f -name data_batch_1 \) \
            | head -n 1)
    [ -n "$found" ] || { note "no train/ or data_batch_1 in $DATA"; exit 3; }
    DATA=$(dirname "$found")
fi

# --- the settings: the real check, or its rehearsal on a CPU --------------------------------
RUNS="$OUT_DIR/runs"
TRAIN=(--augment gpu --lr auto)
COMPILE_BENCH=(--augment gpu --subset 10240 --repeats 2 --only plain,plain_compile)
BENCH=(--subset 10240 --repeats 3)
TRAIN_LIMIT=300 BENCH_LIMIT=240 COMPILE_LIMIT=150
if [ "$REHEARSE" = 1 ]; then
    stub=$(mktemp -d)
    printf '#!/bin/sh\necho "name, memory.total [MiB], driver_version"\necho "rehearsal stub (no GPU), 0 MiB, none"\n' \
        > "$stub/nvidia-smi"
    chmod +x "$stub/nvidia-smi"
    export PATH="$stub:$PATH"
    TINY=(--subset 60 --epochs 2 --peak-epoch 1 --batch-size 16 --cpus-per-worker 1
          --loader-workers 0 --precision fp32 --no-channels-last --width 16)
    TRAIN+=("${TINY[@]}" --num-steps 12)
    COMPILE_BENCH=(--augment gpu --repeats 1 --only plain "${TINY[@]}")
    BENCH=(--repeats 1 --only plain,plain_gpu_augment "${TINY[@]}")
    TRAIN_LIMIT=240 BENCH_LIMIT=120 COMPILE_LIMIT=120
    note "rehearsal on this CPU: tiny subset, stub nvidia-smi; the same stages as on a GPU"
fi
BEFORE=results/gpu-h200/fast-24  # the H200 run every check is set against

part1() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
    stage doctor 60 "$PY" -m raycifar.doctor
    stage train "$TRAIN_LIMIT" "$PY" -m raycifar.train --data-dir "$DATA" "${TRAIN[@]}" \
        --storage-path "$RUNS" --name fast-24
    local run="$RUNS/fast-24"
    if [ -f "$run/summary.json" ]; then
        "$PY" -m raycifar.bench --split "$run" > "$OUT_DIR/split.md" && cat "$OUT_DIR/split.md" \
            || FAILED=1
        "$PY" -m raycifar.bench --split "$BEFORE" "$run" > "$OUT_DIR/figures.md" \
            && cat "$OUT_DIR/figures.md" || FAILED=1
        # paired accuracy against the H200 run; a rehearsal's tiny test set is not that
        # run's, so it compares the run with itself (the command is what it rehearses)
        local other=$BEFORE
        [ "$REHEARSE" = 1 ] && other=$run
        stage compare 60 "$PY" jobs/compare.py "$other" "$run" --names before,now \
            --tolerance 0.3 --out "$OUT_DIR/compare.md"
        stage report 90 "$PY" jobs/report.py "$run" --out "$OUT_DIR/report"
    else
        note "no finished run folder: split, figures, comparison and report skipped"; FAILED=1
    fi
}

part2() {
    local mode
    for mode in default reduce-overhead; do
        stage "compile-$mode" "$COMPILE_LIMIT" "$PY" -m raycifar.bench --data-dir "$DATA" \
            "${COMPILE_BENCH[@]}" --compile-mode "$mode" --out "$OUT_DIR/compile-$mode.md" \
            --json "$OUT_DIR/compile-$mode.json"
    done
    stage bench "$BENCH_LIMIT" "$PY" -m raycifar.bench --data-dir "$DATA" "${BENCH[@]}" \
        --out "$OUT_DIR/BENCHMARKS.md" --json "$OUT_DIR/bench.json"
}

note "part $PART, data $DATA, out $OUT_DIR, ${BUDGET}s per part"
case "$PART" in
    1) part1 ;;
    2) part2 ;;
    all) part1; START=$(date +%s); part2 ;;
esac
# the run folders without their weights and checkpoints: small enough to come back
if [ -d "$RUNS" ]; then
    tar -czf "$OUT_DIR/runs.tar.gz" -C "$RUNS" --exclude='checkpoint_*' --exclude='*.pt' . \
        2>/dev/null
fi
note "done, $([ "$FAILED" = 0 ] && echo "every stage passed" || echo "some stage FAILED"); see $OUT_DIR"
exit "$FAILED"

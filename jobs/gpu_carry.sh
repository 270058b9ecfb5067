#!/usr/bin/env bash
# The folder that travels to a GPU machine with no network, for jobs/gpu_check.sh --carry.
#
#   bash jobs/gpu_carry.sh [--python 3.12] [--data TARBALL] DIR
#
# Made here, where PyPI is reachable: DIR/whl/ holds the wheels a GPU image with Python and
# torch typically lacks (the H200 image of results/gpu-h200: Python 3.12, torch 2.11, no Ray or
# albumentations), built for --python (default 3.12) on manylinux x86_64; DIR/ray-slim.tar.xz
# holds Ray 2.60.0 unpacked without its Java jars and the dashboard's source maps (its wheel is
# 79 MB, over the 64 MiB a device call carries; slim and xz'd it is about 31 MB); DIR/ the data
# tarball (--data, default ../shared/data/cifar10-dev.tar.gz). Everything else the check needs
# (torch, numpy, opencv, PyYAML, ...) must be on the image: `gpu_check.sh` part 1 fails within
# seconds at its doctor stage where something is missing, naming it.
set -euo pipefail
PYV=3.12
DATA_TAR=$(dirname "$0")/../../shared/data/cifar10-dev.tar.gz
while [ $# -gt 1 ]; do
    case "$1" in
        --python) PYV=$2; shift 2 ;;
        --data) DATA_TAR=$2; shift 2 ;;
        *) echo "gpu_carry: unknown option $1" >&2; exit 2 ;;
    esac
done
DIR=${1:?usage: jobs/gpu_carry.sh [--python 3.12] [--data TARBALL] DIR}
mkdir -p "$DIR/whl"
GET=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV"
     --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
# What the H200 image lacked besides Ray (results/gpu-h200/command.sh), pinned as tested there
"${GET[@]}" -d "$DIR/whl" jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
    referencing==0.37.0 rpds-py==0.30.0 tensorboardX==2.6.5 pydantic==2.13.4 \
    pydantic_core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
    albumentations==2.0.8 albucore==0.0.24 simsimd==6.5.16 stringzilla==5.3.2 \
    typing_extensions==4.15.0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${GET[@]}" -d "$tmp" ray==2.60.0
python3 -m zipfile -e "$tmp"/ray-2.60.0-*.whl "$tmp/slim"
# zipfile drops Unix modes: Ray's two binaries must stay executable
chmod +x "$tmp/slim/ray/core/src/ray/raylet/raylet" "$tmp/slim/ray/core/src/ray/gcs/gcs_server"
rm -rf "$tmp/slim/ray/jars"
find "$tmp/slim" -name '*.js.map' -delete
tar -C "$tmp/slim" -cf - . | xz -6 -T0 > "$DIR/ray-slim.tar.xz"
cp "$DATA_TAR" "$DIR/"
du -sh "$DIR"
echo "gpu_carry: carry $DIR with the device tool (under 64 MiB in all), then on the GPU machine:"
echo "  bash jobs/gpu_check.sh --part 1 --carry $DIR $DIR/$(basename "$DATA_TAR")"

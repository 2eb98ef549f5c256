#!/usr/bin/env bash
# Downloads the wheels benchmarks/gpu_check.sh installs on the GPU machine (Python 3.12, torch 2.11.0 and
# torchvision 0.26.0 with numpy and pillow, msgpack; no pyzmq, no network there): every third-party package the
# engine, the workers, the launch and the GPU tests import, with their dependencies, at the versions of
# constraints.txt. gpu_check.sh installs only those the machine lacks, into a private path
# (benchmarks/gpu_deps.py). numpy and pillow are left out: torchvision brings them, and a second numpy on the
# path would shadow the one torch was tested with. torch 2.11 wheels need glibc 2.28 (manylinux_2_28), so
# that tag and the older ones are accepted. The folder is gitignored: it travels with the device call
# (`carry: ["benchmarks/wheels"]`), about 20 MB.
# Usage: bash benchmarks/fetch_wheels.sh [DIR]   (default benchmarks/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-benchmarks/wheels}"
mkdir -p "$dest"
python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --constraint constraints.txt --dest "$dest" \
    pyzmq msgpack psutil tqdm matplotlib pytest pytest-timeout
rm -f "$dest"/numpy-*.whl "$dest"/pillow-*.whl
ls "$dest"
du -sh "$dest"

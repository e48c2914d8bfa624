#!/usr/bin/env bash
# The GPU check (issue 15): retraining throughput vs a minimal PyTorch loop, pruning step times vs
# PruningBench's published ones (benchmarks/gpu_check.py). Under 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [--json OUT.json] [gpu_check.py options]
#
# Needs Python with torch (CUDA), torchvision, timm, numpy, safetensors, PyYAML; torch-pruning and
# pydantic are installed (into .gpu-site/) from wheels in benchmarks/wheels/ when missing (a machine without a registry,
# e.g. the lent GPU machine: Python 3.12, x86-64). Make that folder where a registry is reachable:
#
#   pip download --python-version 3.12 --only-binary=:all: --platform manylinux_2_17_x86_64 \
#       --no-deps -d benchmarks/wheels torch-pruning==1.6.1 pydantic==2.14.4 pydantic-core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions
#
# (the versions installed here; `pip show pydantic pydantic-core`), and carry the
# folder with the working tree. Exit codes: 0 measured, 3 no CUDA device (nothing measured), 2 a
# package is missing and no wheel for it was carried.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PBENCH_NO_PROGRESS=1

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False, or no torch): nothing measured" >&2
    exit 3
fi
missing=()
for pair in torch_pruning:torch-pruning pydantic:pydantic; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
done
if ((${#missing[@]})); then
    if ! ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
        echo "gpu_check: missing ${missing[*]} and no wheels in benchmarks/wheels/ (see the top of this script)" >&2
        exit 2
    fi
    # into a folder of its own, without dependency resolution: the machine's torch and numpy stay as they are
    "$PY" -m pip install --quiet --no-index --no-deps --target .gpu-site benchmarks/wheels/*.whl
    export PYTHONPATH="$PWD/.gpu-site:$PYTHONPATH"
fi
exec timeout 470 "$PY" benchmarks/gpu_check.py "$@"

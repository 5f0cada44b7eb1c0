#!/usr/bin/env bash
# The wheels `make gpu-check` needs on a bare GPU machine that has only JAX, Flax, Optax
# (and the usual scientific stack) for Python 3.12: the versions this checkout's .venv uses.
#
#     experiments/gpu_wheels.sh [DIR]        # default .whl (keep it out of git: .git/info/exclude)
#
# On the GPU machine, from the repository root, with DIR carried along:
#     python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#     PYTHONPATH=/tmp/site:$PWD python3 experiments/gpu_check.py --out OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
python=${PYTHON:-.venv/bin/python}
version() { "$python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
wheels=()
for name in omegaconf hydra-core gymnasium ale-py farama-notifications; do
    wheels+=("$name==$(version "$name")")
done
mkdir -p "$dest"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dest" "${wheels[@]}"
# Hydra's grammar runtime is published as a source archive only: build its pure-Python wheel here.
"$python" -m pip wheel --quiet --no-deps -w "$dest" "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
ls -l "$dest"
du -sh "$dest"

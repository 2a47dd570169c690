#!/usr/bin/env bash
# The wheels the GPU host lacks, for its Python 3.12 on x86-64 (it reaches no package registry):
# exactly the distributions `python bench/gpu_check.py --missing` names (the project's imports less
# what the host has, KINDS.md of the device tool), at the versions installed here, into .whl/
# (git-ignored). `make gpu-check` on the host installs them offline, over the host's own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p .whl
rm -f .whl/*.whl
for name in $("$PY" bench/gpu_check.py --missing); do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$name==$version"
done
ls -l .whl
du -sh .whl

#!/usr/bin/env bash
# Prepare .gpu/ (ignored by git; name it in the device call's carry) for scripts/gpu_bench.sh:
#   .gpu/whl   the wheels the device's python3 lacks (pydantic, PyAV, Hydra), for CPython 3.12 x86-64;
#   .gpu/study a study's params.yaml and data/processed (the real study's 43 photographs at 512 px: 12 MB).
# usage (repo root): scripts/gpu/prepare.sh STUDY_DIR      (a folder where the real study's preprocess ran)
set -euo pipefail
STUDY="${1:?usage: scripts/gpu/prepare.sh STUDY_DIR}"
PY="${PYTHON:-.venv/bin/python}"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl .gpu/study/data
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection "typing-extensions>=4.16" av==18.1.0 \
  hydra-core==1.3.8 omegaconf==2.3.1
"$PY" -m pip wheel -q --no-deps -w .gpu/whl antlr4-python3-runtime==4.9.3   # sdist only on PyPI
cp "$STUDY/params.yaml" .gpu/study/
rm -rf .gpu/study/data/processed && cp -r "$STUDY/data/processed" .gpu/study/data/
du -sh .gpu

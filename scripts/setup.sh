#!/usr/bin/env bash
# Create .venv with trtkv (editable) and its dev/test dependencies. Idempotent.
# torch is pinned: a looser spec pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,serve]"
# tritonserver + its Python backend for the Triton tests (runs on CPU). --no-deps: the wheel
# pins numpy<2, but only the server binary and backend are used, never its Python API.
.venv/bin/python -m pip install -q --no-deps "nvidia-pytriton==0.7.0"

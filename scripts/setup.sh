#!/usr/bin/env bash
# Create .venv with trtkv (editable) and its dev/test dependencies. Idempotent.
# torch is pinned: a looser spec pulls a multi-GB CUDA build; 2.13.0 is the CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# redis-server (Debian package) for the shared KV store tier's tests; they start their own
# server on a free loopback port and skip only when the binary is absent.
if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  { $SUDO apt-get update -q && $SUDO apt-get install -y -q redis-server; } >/dev/null \
    || echo "warning: could not install redis-server; the Redis KV store tests will skip" >&2
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.13.0"
# dev: the test and lint tools plus the serve, bench, store and gguf extras (every feature is tested).
.venv/bin/python -m pip install -q -e ".[dev]"
# tritonserver + its Python backend for the Triton tests (runs on CPU). --no-deps: the wheel
# pins numpy<2, but only the server binary and backend are used, never its Python API. Its
# Python backend stub is built against numpy 1, so the tests run the stub in a venv that sees
# this one's packages but numpy 1 first (tests/serving/test_triton.py): numpy 1 goes here.
.venv/bin/python -m pip install -q --no-deps "nvidia-pytriton==0.7.0"
.venv/bin/python -m pip install -q --target .venv/triton-stub-numpy "numpy<2"
# TensorRT for RTX (real libraries on PyPI; builds engines with no GPU present): `trtkv build
# --flavor rtx` and its CI tests. The `rtx` extra of the package.
.venv/bin/python -m pip install -q -e ".[rtx]"
# FlashInfer's CUDA headers (FA2/FA3 attention, CUTLASS, CCCL) for the plugin compile checks.
# --no-deps: only the headers inside the wheel are used (its Python API wants a CUDA torch).
.venv/bin/python -m pip install -q --no-deps "flashinfer-python==0.7.4"
# ONNX Runtime's C/C++ API headers, for the native CPU kernels of the trtkv ops (a custom-op
# library trtkv compiles with g++ on first use: plugins/cpu/). No PyPI wheel or Debian package
# ships them; the npm package com.github.asus4.onnxruntime (MIT, a Unity plugin of ONNX
# Runtime) carries the full header set. Only the headers are kept: <venv>/include/onnxruntime.
ORT_HEADERS=.venv/include/onnxruntime
if [ ! -f "$ORT_HEADERS/onnxruntime_cxx_api.h" ]; then
  if command -v npm >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    if (cd "$tmp" && npm pack -q com.github.asus4.onnxruntime@0.4.9 >/dev/null 2>&1 \
        && tar xzf com.github.asus4.onnxruntime-0.4.9.tgz --wildcards \
           'package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/*'); then
      mkdir -p .venv/include
      rm -rf "$ORT_HEADERS"
      mv "$tmp/package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers" "$ORT_HEADERS"
    else
      echo "warning: could not fetch ONNX Runtime's headers from npm; trtkv runs the ONNX function bodies" >&2
    fi
    rm -rf "$tmp"
  else
    echo "warning: npm not found; no ONNX Runtime headers, so trtkv runs the ONNX function bodies (slower)" >&2
  fi
fi

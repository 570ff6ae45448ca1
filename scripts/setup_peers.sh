#!/usr/bin/env bash
# The CPU peer systems for benchmarks/bench_peers.py, in their OWN virtual environment (trtkv's
# .venv is never touched: onnxruntime-genai pins its own onnxruntime):
#   out/peers/venv                 onnxruntime-genai (+ torch, transformers, onnx for its model
#                                  builder; gguf, sentencepiece for llama.cpp's converter)
#   out/peers/llama_cpp_python-*/  the llama-cpp-python sdist, for its vendored llama.cpp sources
#   out/peers/llama.cpp-build/bin  llama-server and llama-quantize built from those sources
# Everything CPU-heavy runs under `nice -n 19`. Re-running skips what is already there.
#
#   bash scripts/setup_peers.sh            # then: .venv/bin/python benchmarks/bench_peers.py
# Environment: PEERS_DIR (default out/peers), PYTHON (default python3, >= 3.10),
#   LLAMA_CPP_PYTHON_VERSION (0.3.36), ORT_GENAI_VERSION (0.18.*), JOBS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_DIR=${PEERS_DIR:-out/peers}
PYTHON=${PYTHON:-python3}
LCP_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
OG_VERSION=${ORT_GENAI_VERSION:-0.18.*}
JOBS=${JOBS:-2}
mkdir -p "$PEERS_DIR"

if [ ! -x "$PEERS_DIR/venv/bin/python" ]; then
  echo "== peers venv: $PEERS_DIR/venv"
  "$PYTHON" -m venv "$PEERS_DIR/venv"
fi
VPY="$PEERS_DIR/venv/bin/python"
if ! "$VPY" -c "import onnxruntime_genai, torch, transformers, onnx, gguf" 2>/dev/null; then
  echo "== installing onnxruntime-genai $OG_VERSION and the converters' dependencies"
  # torch: a local CPU wheel when the machine has one (avoids the CUDA build from PyPI)
  TORCH=$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | head -1 || true)
  [ -n "$TORCH" ] || TORCH="torch --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple"
  # shellcheck disable=SC2086
  nice -n 19 "$VPY" -m pip install -q "onnxruntime-genai==$OG_VERSION" $TORCH \
    transformers onnx onnx-ir gguf numpy safetensors sentencepiece protobuf
fi

SRC="$PEERS_DIR/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  echo "== llama-cpp-python $LCP_VERSION sdist (vendored llama.cpp sources)"
  "$VPY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LCP_VERSION" -d "$PEERS_DIR/sdist"
  tar xzf "$PEERS_DIR/sdist/llama_cpp_python-$LCP_VERSION.tar.gz" -C "$PEERS_DIR"
fi

BUILD="$PEERS_DIR/llama.cpp-build"
# -march=native, except on CPUs with AMX: ggml's AMX kernels (picked for Q8_0 / Q4 weights)
# segfault in ggml_backend_amx_mul_mat on such a VM, so there AVX-512 is named feature by feature.
ARCH=(-DGGML_NATIVE=ON)
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
  has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
  ARCH=(-DGGML_NATIVE=OFF -DGGML_SSE42="$(has sse4_2)" -DGGML_AVX="$(has avx)" -DGGML_AVX2="$(has avx2)"
        -DGGML_FMA="$(has fma)" -DGGML_F16C="$(has f16c)" -DGGML_BMI2="$(has bmi2)" -DGGML_AVX512="$(has avx512f)" -DGGML_AVX512_VBMI="$(has avx512vbmi)"
        -DGGML_AVX512_VNNI="$(has avx512_vnni)" -DGGML_AVX512_BF16="$(has avx512_bf16)"
        -DGGML_AVX_VNNI="$(has avx_vnni)" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
if [ ! -x "$BUILD/bin/llama-server" ] || [ "$(cat "$BUILD/.arch" 2>/dev/null)" != "${ARCH[*]}" ]; then
  echo "== building llama-server from $SRC (nice -n 19, -j$JOBS; about 12 min on 2 cores): ${ARCH[*]}"
  GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
  nice -n 19 cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_CURL=OFF "${ARCH[@]}" >/dev/null
  nice -n 19 cmake --build "$BUILD" -j"$JOBS" --target llama-server llama-quantize
  echo "${ARCH[*]}" > "$BUILD/.arch"
fi

echo "== peers ready"
"$VPY" -c "import onnxruntime_genai as og, onnxruntime as ort; print('onnxruntime-genai', og.__version__, '/ onnxruntime', ort.__version__)"
"$BUILD/bin/llama-server" --version 2>&1 | head -1
echo "run: .venv/bin/python benchmarks/bench_peers.py --quick   (smoke)  |  --repeat 3 --json $PEERS_DIR/results.json"

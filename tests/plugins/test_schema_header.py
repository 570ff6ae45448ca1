"""The plugins' view of the op contract is generated from trtkv/ops/schema.py and used.

- regenerating plugins/generated/trtkv_ops.h gives the committed file byte for byte;
- the header's tables equal the schema's (names, order, attributes, defaults, dtype masks);
- the TensorRT wrappers take names, versions, namespace and attribute names from the header
  (no hand-typed copies) and index tensors by the generated enums;
- the wrapper sources compile against TensorRT's headers where those are installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from trtkv.build.plugin_library import load_plugins_module
from trtkv.ops import schema

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGINS = REPO_ROOT / "plugins"
HEADER = PLUGINS / "generated" / "trtkv_ops.h"
WRAPPERS = sorted((PLUGINS / "tensorrt").glob("*.cpp")) + sorted((PLUGINS / "tensorrt").glob("*.h"))

gen = load_plugins_module("gen_schema_header")


def test_committed_header_is_up_to_date() -> None:
    assert HEADER.read_text() == gen.render(), "run `python plugins/gen_schema_header.py` and commit the header"


def test_check_mode_reports_fresh_header() -> None:
    assert gen.main(["--check"]) == 0


def _block(op: schema.OpSchema) -> str:
    text = HEADER.read_text()
    ns = gen._snake(op.name)
    start = text.index(f"namespace {ns} {{")
    return text[start:text.index(f"}} // namespace {ns}", start)]


@pytest.mark.parametrize("op", list(schema.OPS.values()), ids=lambda o: o.name)
def test_header_tables_match_schema(op: schema.OpSchema) -> None:
    block = _block(op)
    assert f'kName[] = "{op.name}"' in block
    assert f'kVersion[] = "{op.version}"' in block
    for index, name in enumerate(op.input_names):
        assert re.search(rf"k{gen._camel(name)} = {index}, //!< {name} ", block), name
    for index, name in enumerate(op.output_names):
        assert re.search(rf"k{gen._camel(name)} = {index}, //!< {name} ", block), name
    assert f"kNumInputs = {len(op.inputs)}," in block
    assert f"kNumOutputs = {len(op.outputs)}," in block
    assert "kInputNames[] = {" + ", ".join(f'"{n}"' for n in op.input_names) + "}" in block
    for attr in op.attributes:
        assert f'kAttr{gen._camel(attr.name)}[] = "{attr.name}"' in block
        assert f"kDefault{gen._camel(attr.name)} = {attr.default}" in block
    masks = ", ".join(f"0x{gen._dtype_mask(t):02x}u" for t in op.inputs)
    assert f"kInputDTypeMasks[] = {{{masks}}}" in block


def test_header_namespace_and_domain() -> None:
    text = HEADER.read_text()
    assert f'kPluginNamespace[] = "{schema.PLUGIN_NAMESPACE}"' in text
    assert f'kOpDomain[] = "{schema.OP_DOMAIN}"' in text
    assert schema.PLUGIN_NODE_ATTRIBUTES["plugin_version"] == str(schema.PAGED_ATTENTION.version)


def test_wrappers_use_generated_constants() -> None:
    literals = {op.name for op in schema.OPS.values()} | {schema.PLUGIN_NAMESPACE}
    literals |= {a.name for op in schema.OPS.values() for a in op.attributes}
    literals |= {t.name for op in schema.OPS.values() for t in (*op.inputs, *op.outputs)}
    for path in WRAPPERS:
        strings = set(re.findall(r'"([^"\\]*)"', path.read_text()))
        copied = strings & literals
        assert not copied, f"{path.name} hard-codes {sorted(copied)}; use plugins/generated/trtkv_ops.h"
    sources = {p.name: p.read_text() for p in WRAPPERS}
    for name in ("kv_append_plugin.cpp", "paged_attention_plugin.cpp"):
        text = sources[name]
        assert '#include "plugin_common.h"' in text
        for const in ("op::kName", "op::kVersion", "ops::kPluginNamespace", "op::kNumInputs", "op::kNumOutputs",
                      "op::kInputDTypeMasks", "op::kOutputDTypeMasks"):
            assert const in text, f"{name} does not use {const}"
    attention = sources["paged_attention_plugin.cpp"]
    for attr in schema.PAGED_ATTENTION.attributes:
        camel = gen._camel(attr.name)
        assert f"op::kAttr{camel}" in attention and f"op::kDefault{camel}" in attention, attr.name
    assert '#include "../generated/trtkv_ops.h"' in sources["plugin_common.h"]
    # Every input the kernels read is indexed through the generated enum.
    for op, name in ((schema.KV_APPEND, "kv_append_plugin.cpp"), (schema.PAGED_ATTENTION, "paged_attention_plugin.cpp")):
        for tensor in (*op.inputs, *op.outputs):
            assert f"op::k{gen._camel(tensor.name)}" in sources[name], f"{name} never uses {tensor.name}"


def test_capi_dtype_codes_match_kernel_enum() -> None:
    header = (PLUGINS / "kernels" / "trtkv_kernels.h").read_text()
    codes = {"fp32": "kFP32", "fp16": "kFP16", "bf16": "kBF16", "fp8": "kFP8E4M3", "int8": "kINT8"}
    checks = load_plugins_module("kernel_checks")
    for name, enum in codes.items():
        assert re.search(rf"{enum} = {checks.DTYPE_CODES[name]},", header), name
    assert set(codes) == set(schema.KV_DTYPES)


def _tensorrt_include_dir() -> Path | None:
    """TensorRT's include dir: $TRTKV_TRT_INCLUDE, $TENSORRT_ROOT/include, else the distro paths."""
    candidates = []
    if os.environ.get("TRTKV_TRT_INCLUDE"):
        candidates.append(Path(os.environ["TRTKV_TRT_INCLUDE"]))
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    candidates += [Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include")]
    for path in candidates:
        if (path / "NvInferRuntime.h").is_file():
            return path
    return None


def _tensorrt_major(include: Path) -> int | None:
    """NV_TENSORRT_MAJOR from NvInferVersion.h (plain number, or the TRT_MAJOR_ENTERPRISE alias)."""
    version = include / "NvInferVersion.h"
    if not version.is_file():
        return None
    text = version.read_text(errors="replace")
    for pattern in (r"#define\s+NV_TENSORRT_MAJOR\s+(\d+)", r"#define\s+TRT_MAJOR_ENTERPRISE\s+(\d+)"):
        match = re.search(pattern, text)
        if match:
            return int(match.group(1))
    return None


def _cuda_include_dir() -> Path | None:
    """Directory holding cuda_runtime_api.h. `nvcc` may be a wrapper script outside the toolkit
    (e.g. /usr/local/bin/nvcc exec'ing /usr/local/cuda-13.0/bin/nvcc), so its resolved path is only
    one of the candidates."""
    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    candidates += [Path("/usr/local/cuda/include"), Path("/usr/include")]
    for path in candidates:
        if (path / "cuda_runtime_api.h").is_file():
            return path
    return None


def _trt_toolchain() -> tuple[str, list[str], Path]:
    """(C++ compiler, flags, TensorRT include dir) for building against TensorRT's headers; skips
    where the headers are absent (CI: they are not installable there) or older than TensorRT 10."""
    include = _tensorrt_include_dir()
    if include is None:
        pytest.skip("NvInferRuntime.h not found (set TENSORRT_ROOT or TRTKV_TRT_INCLUDE); "
                    "TensorRT headers are not installable here")
    major = _tensorrt_major(include)
    if major is not None and major < 10:
        pytest.skip(f"TensorRT {major} headers in {include}; the IPluginV3 wrappers need TensorRT >= 10")
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    cuda_include = _cuda_include_dir()
    if cuda_include is None:
        pytest.skip("cuda_runtime_api.h not found (set CUDA_HOME or put the CUDA toolkit's nvcc on PATH)")
    # -isystem: TensorRT's own headers warn under -Wextra (unused parameters); ours must not.
    flags = ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-isystem", str(include), "-isystem", str(cuda_include)]
    return cxx, flags, include


def test_wrappers_compile_against_tensorrt_headers(tmp_path: Path) -> None:
    """Object-compile every wrapper TU (and each header on its own) against TensorRT's headers with
    -Wall -Wextra -Werror."""
    cxx, flags, include = _trt_toolchain()
    sources = sorted((PLUGINS / "tensorrt").glob("*.cpp"))
    headers = sorted((PLUGINS / "tensorrt").glob("*.h"))
    assert {p.name for p in sources} >= {"kv_append_plugin.cpp", "paged_attention_plugin.cpp", "plugin_registration.cpp"}
    for path in sources:
        proc = subprocess.run([cxx, *flags, "-c", str(path), "-o", str(tmp_path / f"{path.stem}.o")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{path.name} (TensorRT headers {include}):\n{proc.stderr}"
    for path in headers:  # each header is self-contained
        unit = tmp_path / f"{path.stem}_only.cpp"
        unit.write_text(f'#include "{path}"\n')
        proc = subprocess.run([cxx, *flags, "-fsyntax-only", str(unit)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{path.name} alone (TensorRT headers {include}):\n{proc.stderr}"
    # The dynamic-loading entry points are exported with C linkage.
    nm = shutil.which("nm")
    if nm is not None:
        symbols = subprocess.run([nm, "-g", "--defined-only", str(tmp_path / "plugin_registration.o")],
                                 capture_output=True, text=True, check=True).stdout.split()
        assert "getCreators" in symbols and "setLoggerFinder" in symbols, symbols


def test_wrappers_host_smoke(tmp_path: Path) -> None:
    """Link the wrappers with tests/plugins/trt_host_smoke.cpp (recording stubs in place of the
    kernel launchers; no libnvinfer, no GPU) and run it: getCreators(), names/versions/namespace,
    capability interfaces, dtype/format rules, configurePlugin checks, field (de)serialization and
    the parameters enqueue() hands the kernels, including the write-through pool pointer."""
    cxx, flags, include = _trt_toolchain()
    exe = tmp_path / "trt_host_smoke"
    # With the FlashInfer route compiled in (its host API stubbed by the smoke test).
    build = subprocess.run([cxx, *flags, "-DTRTKV_WITH_FLASHINFER", str(Path(__file__).with_name("trt_host_smoke.cpp")),
                            *map(str, sorted((PLUGINS / "tensorrt").glob("*.cpp"))), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"build against {include}:\n{build.stderr}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "OK" in run.stdout

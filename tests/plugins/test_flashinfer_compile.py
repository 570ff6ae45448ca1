"""CI check: the FlashInfer-based attention (plugins/flashinfer/) compiles for sm_80, sm_89 and
sm_90 and exports its host API (no GPU needed; nothing here runs a kernel).

One library per arch so each arch's compile time is measured on its own; the times are printed,
attached to the test report (``record_property``) and kept in the pytest cache under
``trtkv/flashinfer_compile_seconds``. Objects are cached by source hash, so reruns are instant.
Skips cleanly without nvcc or without flashinfer-python's headers.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trtkv.build.plugin_library import load_plugins_module

REPO_ROOT = Path(__file__).resolve().parents[2]
flashinfer_build = load_plugins_module("flashinfer_build")

requires_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
requires_headers = pytest.mark.skipif(flashinfer_build.flashinfer_include_dirs() is None,
                                      reason="flashinfer-python's CUDA headers are not installed")
EXPORTED = (
    "trtkv::flashinfer_attn::status_string(",
    "trtkv::flashinfer_attn::workspace_size(",
    "trtkv::flashinfer_attn::plan(",
    "trtkv::flashinfer_attn::run(",
    "trtkv::flashinfer_attn::read_device_error(",
)


@pytest.fixture(scope="module", params=flashinfer_build.RELEASE_ARCHS, ids=lambda a: f"sm_{a}")
def arch_library(request: pytest.FixtureRequest) -> tuple[str, Path, float]:
    arch = request.param
    library, seconds = flashinfer_build.build_flashinfer_library((arch,))
    state = "cached" if seconds == 0 else "compiled"
    print(f"libtrtkv_flashinfer.so for sm_{arch}: {seconds:.1f} s ({state})")
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    if seconds > 0 and cache is not None:
        times = cache.get("trtkv/flashinfer_compile_seconds", {})
        times[f"sm_{arch}"] = round(seconds, 1)
        cache.set("trtkv/flashinfer_compile_seconds", times)
    return arch, library, seconds


@pytest.mark.slow
@requires_nvcc
@requires_headers
def test_flashinfer_library_builds_and_exports_api(
    arch_library: tuple[str, Path, float], record_property: Callable[[str, Any], None],
) -> None:
    arch, library, seconds = arch_library
    record_property(f"compile_seconds_sm_{arch}", round(seconds, 1))
    assert library.is_file()
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm is not on PATH")
    listing = subprocess.run([nm, "-D", "-C", "--defined-only", str(library)],
                             capture_output=True, text=True, check=True).stdout
    for name in EXPORTED:
        assert name in listing, f"{name} not exported from {library}"
    # Hidden visibility: FlashInfer's template instances stay inside (no clash with another
    # FlashInfer, e.g. torch's, loaded in the same process).
    assert "flashinfer::" not in listing.replace("flashinfer_attn::", "")


def test_gencode_flags_one_cubin_per_arch() -> None:
    assert flashinfer_build.gencode_flags(("80", "90")) == [
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    assert flashinfer_build.gencode_flags(("89", "80"), ptx=True)[-1] == "arch=compute_80,code=compute_80"


def test_sources_and_headers_are_listed() -> None:
    names = [p.name for p in flashinfer_build.sources()]
    assert names[0] == "fi_plan.cu"
    assert {"fi_prefill_hd64_fp16.cu", "fi_prefill_hd128_bf16.cu"} <= set(names)
    assert "trtkv_flashinfer.h" in [p.name for p in flashinfer_build.headers()]


def test_host_api_includes_no_framework_header() -> None:
    for path in (REPO_ROOT / "plugins" / "flashinfer").iterdir():
        if path.suffix in (".h", ".cuh", ".cu"):
            text = path.read_text()
            for banned in ("NvInfer", "torch/", "ATen/", "tvm/ffi"):
                assert banned not in text, f"{path.name} includes {banned}"


@pytest.mark.slow
@requires_nvcc
@requires_headers
def test_host_api_rejects_bad_steps_before_any_cuda_call(tmp_path: Path) -> None:
    # Runs on the CPU: every malformed input must come back as a status (no device access).
    library, _ = flashinfer_build.build_flashinfer_library(("80",))
    exe = tmp_path / "flashinfer_host_check"
    subprocess.run(
        ["nvcc", "-std=c++17", str(REPO_ROOT / "tests" / "plugins" / "flashinfer_host_check.cpp"),
         f"-I{REPO_ROOT / 'plugins' / 'flashinfer'}", f"-L{library.parent}", "-ltrtkv_flashinfer",
         f"-Xlinker=-rpath,{library.parent}", "-o", str(exe)],
        check=True, capture_output=True, text=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr

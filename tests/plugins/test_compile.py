"""CI check: every CUDA kernel and the C ABI compile for sm_80, sm_89 and sm_90 (no GPU needed).

One nvcc invocation builds libtrtkv_kernels.so with a cubin per arch plus compute_80 PTX; the
result is cached per source hash, so reruns in a session are instant.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from trtkv.build.plugin_library import load_plugins_module

REPO_ROOT = Path(__file__).resolve().parents[2]
nvcc_build = load_plugins_module("nvcc_build")

requires_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
EXPECTED_SYMBOLS = (
    "trtkv_abi_version", "trtkv_status_string", "trtkv_kv_append", "trtkv_paged_attention",
    "trtkv_paged_attention_workspace_size", "trtkv_paged_attention_num_splits",
    "trtkv_kv_append_checked", "trtkv_paged_attention_checked", "trtkv_status_from_error_flags",
)


@pytest.fixture(scope="module")
def release_library() -> Path:
    library, seconds = nvcc_build.build_kernels_library(nvcc_build.RELEASE_ARCHS)
    print(f"built {library} in {seconds:.1f} s")
    return library


@requires_nvcc
def test_kernels_compile_for_release_archs(release_library: Path) -> None:
    assert release_library.is_file()


@requires_nvcc
def test_library_holds_cubins_for_each_arch_and_ptx(release_library: Path) -> None:
    # `nvcc` may be a wrapper script outside the toolkit (/usr/local/bin/nvcc exec'ing
    # /usr/local/cuda-13.0/bin/nvcc), so look next to it and in the usual toolkit roots.
    nvcc = shutil.which("nvcc")
    roots = [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    roots += [Path(nvcc).resolve().parent.parent] if nvcc else []
    roots.append(Path("/usr/local/cuda"))
    siblings = [root / "bin" / "cuobjdump" for root in roots]
    cuobjdump = shutil.which("cuobjdump") or next((str(p) for p in siblings if p.is_file()), None)
    if cuobjdump is None:
        pytest.skip("cuobjdump is not on PATH")
    listing = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", str(release_library)],
                             capture_output=True, text=True, check=True).stdout
    for arch in nvcc_build.RELEASE_ARCHS:
        assert f"sm_{arch}" in listing, f"no cubin for sm_{arch}:\n{listing}"
    assert "compute_80" in listing or ".ptx" in listing, listing


@requires_nvcc
def test_c_abi_exports(release_library: Path) -> None:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm is not on PATH")
    symbols = subprocess.run([nm, "-D", "--defined-only", str(release_library)],
                             capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in symbols.splitlines() if line.strip()}
    for name in EXPECTED_SYMBOLS:
        assert name in exported
    # Hidden visibility: only the C ABI leaks out (no C++ kernel symbols to clash with others).
    assert not any(s.startswith("_ZN5trtkv") for s in exported)


def test_gencode_flags_pin_cubins_and_lowest_ptx() -> None:
    flags = nvcc_build.gencode_flags(("80", "89", "90"))
    assert flags == [
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_89,code=sm_89",
        "-gencode", "arch=compute_90,code=sm_90", "-gencode", "arch=compute_80,code=compute_80",
    ]


def test_cmake_targets_release_archs() -> None:
    text = (REPO_ROOT / "plugins" / "CMakeLists.txt").read_text()
    assert '"80-real;89-real;90-real;80-virtual"' in text


def test_kernels_include_no_tensorrt_header() -> None:
    emulation = [p for p in (REPO_ROOT / "plugins" / "emulation").rglob("*") if p.is_file()]
    for path in [*(REPO_ROOT / "plugins" / "kernels").iterdir(), *(REPO_ROOT / "plugins" / "capi").iterdir(),
                 *emulation]:
        text = path.read_text()
        assert "NvInfer" not in text, f"{path} includes a TensorRT header"

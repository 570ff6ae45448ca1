"""Build libtrtkv_kernels.so (kernels + C ABI, no TensorRT) with nvcc directly.

Used by the CI compile test (sm_80/sm_89/sm_90 + compute_80 PTX), the GPU tests and
scripts/gpu_check.py (the local GPU's arch). One nvcc invocation per library; results are
cached by (sources, flags) hash under a temp directory, so a test session compiles each arch
set once. CMake (plugins/CMakeLists.txt) is the packaging build; this is the quick path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PLUGINS_DIR = Path(__file__).resolve().parent
KERNEL_SOURCES = (
    PLUGINS_DIR / "kernels" / "kv_append.cu",
    PLUGINS_DIR / "kernels" / "paged_attention.cu",
    PLUGINS_DIR / "capi" / "trtkv_kernels.cu",
)
KERNEL_HEADERS = (*sorted((PLUGINS_DIR / "kernels").glob("*.h*")), PLUGINS_DIR / "generated" / "trtkv_ops.h")
#: The CI / release targets: cubins for Ampere, Ada, Hopper and PTX for the lowest.
RELEASE_ARCHS = ("80", "89", "90")


def gencode_flags(archs: tuple[str, ...]) -> list[str]:
    """``-gencode`` flags: a cubin per arch plus PTX of the lowest (forward compatibility)."""
    if archs == ("native",):
        return ["-arch=native"]
    flags = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    lowest = min(archs, key=int)
    flags += ["-gencode", f"arch=compute_{lowest},code=compute_{lowest}"]
    return flags


def nvcc_path() -> str | None:
    return shutil.which("nvcc")


def _cache_dir() -> Path:
    root = os.environ.get("TRTKV_NVCC_CACHE") or os.path.join(tempfile.gettempdir(), f"trtkv-nvcc-{os.getuid()}")
    return Path(root)


def build_kernels_library(
    archs: tuple[str, ...] = RELEASE_ARCHS, *, opt_level: str = "-O2", extra_flags: tuple[str, ...] = (),
    out_dir: Path | None = None, verbose: bool = False,
) -> tuple[Path, float]:
    """Compile libtrtkv_kernels.so for ``archs`` (``("native",)`` = the local GPU).

    Returns:
        (path of the library, seconds spent compiling; 0.0 on a cache hit).

    Raises:
        FileNotFoundError: nvcc is not on PATH.
        RuntimeError: compilation failed (message holds nvcc's output).
    """
    nvcc = nvcc_path()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found on PATH")
    flags = [
        "-std=c++17", opt_level, "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden", "-t", "2",
        "--expt-relaxed-constexpr", f"-I{PLUGINS_DIR / 'kernels'}", *gencode_flags(archs), *extra_flags,
    ]
    digest = hashlib.sha256()
    for path in (*KERNEL_SOURCES, *KERNEL_HEADERS):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(flags).encode())
    target_dir = out_dir or (_cache_dir() / digest.hexdigest()[:16])
    library = target_dir / "libtrtkv_kernels.so"
    if out_dir is None and library.is_file():
        return library, 0.0
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp = target_dir / f".libtrtkv_kernels.{os.getpid()}.so"
    cmd = [nvcc, *flags, *map(str, KERNEL_SOURCES), "-o", str(tmp)]
    if verbose:
        print(" ".join(cmd), flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    tmp.replace(library)  # atomic: concurrent sessions never see a half-written library
    return library, elapsed

"""Build libtrtkv_flashinfer.so (plugins/flashinfer/: FlashInfer FA2 attention behind a plain
C++ host API) with nvcc directly.

FlashInfer's CUDA headers come from the installed ``flashinfer-python`` wheel (found without
importing it: its Python dependencies need not be installed). They build with nvcc 13 when the
wheel's own CCCL comes before the toolkit's on the include path.

One nvcc per translation unit (one FlashInfer instantiation set per (head_dim, query dtype)),
objects cached by (source, headers, flags, FlashInfer version) hash like nvcc_build.py, then one
link. Used by tests/plugins/test_flashinfer_compile.py (one library per arch, to time each).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PLUGINS_DIR = Path(__file__).resolve().parent
SOURCE_DIR = PLUGINS_DIR / "flashinfer"
#: CI / release targets; FA2 kernels on all three (see plugins/flashinfer/README.md).
RELEASE_ARCHS = ("80", "89", "90")
LIBRARY_NAME = "libtrtkv_flashinfer.so"


def sources() -> tuple[Path, ...]:
    """The translation units, planner first (it is the quickest to fail on a header problem)."""
    units = sorted(SOURCE_DIR.glob("*.cu"))
    return tuple(sorted(units, key=lambda p: p.name != "fi_plan.cu"))


def headers() -> tuple[Path, ...]:
    return tuple(sorted([*SOURCE_DIR.glob("*.h"), *SOURCE_DIR.glob("*.cuh")]))


def flashinfer_data_dir() -> Path | None:
    """``flashinfer/data`` of the installed wheel, or None. Does not import flashinfer."""
    try:
        spec = importlib.util.find_spec("flashinfer")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "data"
        if (data / "include" / "flashinfer" / "attention" / "prefill.cuh").is_file():
            return data
    return None


def flashinfer_include_dirs() -> list[Path] | None:
    """Include path in the order nvcc 13 needs: the wheel's CCCL, FlashInfer, CUTLASS."""
    data = flashinfer_data_dir()
    if data is None:
        return None
    dirs = [
        data / "cccl" / "libcudacxx" / "include", data / "cccl" / "cub", data / "cccl" / "thrust",
        data / "include", data / "cutlass" / "include",
    ]
    return dirs if all(d.is_dir() for d in dirs) else None


def flashinfer_version() -> str:
    try:
        return importlib.metadata.version("flashinfer-python")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def gencode_flags(archs: Sequence[str], *, ptx: bool = False) -> list[str]:
    """A cubin per arch (``sm_XX``), plus PTX of the lowest when ``ptx``."""
    flags: list[str] = []
    for arch in archs:
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    if ptx:
        lowest = min(archs, key=lambda a: int(a.rstrip("a")))
        flags += ["-gencode", f"arch=compute_{lowest},code=compute_{lowest}"]
    return flags


def _cache_dir() -> Path:
    root = os.environ.get("TRTKV_NVCC_CACHE") or os.path.join(tempfile.gettempdir(), f"trtkv-nvcc-{os.getuid()}")
    return Path(root) / "flashinfer"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def _run(cmd: list[str], verbose: bool) -> None:
    if verbose:
        print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")


def build_flashinfer_library(
    archs: Sequence[str] = RELEASE_ARCHS, *, opt_level: str = "-O2", extra_flags: Sequence[str] = (),
    jobs: int = 1, nvcc_threads: int = 2, niceness: int = 10, ptx: bool = False,
    out_dir: Path | None = None, verbose: bool = False,
) -> tuple[Path, float]:
    """Compile libtrtkv_flashinfer.so for ``archs`` (e.g. ``("80",)``, ``("80", "89", "90")``).

    Args:
        archs: SM versions to emit cubins for.
        jobs: translation units compiled at once; keep ``jobs * nvcc_threads`` within the cores
            you may use (CI: 2 cores -> jobs=1, nvcc_threads=2).
        nvcc_threads: nvcc ``-t`` (parallel per-arch compilation inside one nvcc).
        niceness: run nvcc under ``nice -n`` (0 = not niced).
        ptx: also embed PTX of the lowest arch.
        out_dir: write the library there (forces a rebuild of the link step).

    Returns:
        (path of the library, seconds spent compiling and linking; 0.0 when fully cached).

    Raises:
        FileNotFoundError: nvcc is not on PATH, or the flashinfer-python headers are missing.
        RuntimeError: compilation failed (message holds nvcc's output).
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc not found on PATH")
    includes = flashinfer_include_dirs()
    if includes is None:
        raise FileNotFoundError("flashinfer-python's CUDA headers not found: pip install flashinfer-python")
    prefix = ["nice", "-n", str(niceness)] if niceness and shutil.which("nice") else []
    flags = [
        "-std=c++17", opt_level, "-Xcompiler", "-fPIC,-fvisibility=hidden", "-t", str(nvcc_threads),
        "--expt-relaxed-constexpr", "-DNDEBUG", *(f"-I{d}" for d in includes), f"-I{SOURCE_DIR}",
        *gencode_flags(archs, ptx=ptx), *extra_flags,
    ]
    header_bytes = b"".join(p.name.encode() + p.read_bytes() for p in headers())
    # The key names the FlashInfer version, not where its wheel is installed: a checkout in
    # another folder (CI's fresh clone, its own .venv) reuses the same objects.
    portable = [f for f in flags if not f.startswith("-I")]
    common = (" ".join(portable).encode(), header_bytes, flashinfer_version().encode())
    cache = _cache_dir()
    objects: list[tuple[Path, Path]] = []
    for src in sources():
        key = _digest(src.name.encode(), src.read_bytes(), *common)
        objects.append((src, cache / "obj" / f"{src.stem}.{key}.o"))
    link_key = _digest(*(str(obj).encode() for _, obj in objects), " ".join(gencode_flags(archs, ptx=ptx)).encode())
    target_dir = out_dir or (cache / "lib" / link_key)
    library = target_dir / LIBRARY_NAME
    if out_dir is None and library.is_file():
        return library, 0.0

    started = time.monotonic()
    (cache / "obj").mkdir(parents=True, exist_ok=True)

    def compile_one(item: tuple[Path, Path]) -> None:
        src, obj = item
        if obj.is_file():
            return
        tmp = obj.with_name(f".{obj.name}.{os.getpid()}.tmp.o")
        _run([*prefix, nvcc, *flags, "-c", str(src), "-o", str(tmp)], verbose)
        tmp.replace(obj)  # atomic: concurrent sessions never see a half-written object

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(compile_one, objects))
    target_dir.mkdir(parents=True, exist_ok=True)
    tmp_lib = target_dir / f".{LIBRARY_NAME}.{os.getpid()}"
    _run([*prefix, nvcc, "-shared", *gencode_flags(archs, ptx=ptx), *(str(o) for _, o in objects),
          "-o", str(tmp_lib)], verbose)
    tmp_lib.replace(library)
    return library, time.monotonic() - started

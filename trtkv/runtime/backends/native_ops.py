"""The native CPU kernels of the trtkv ops for ONNX Runtime (``plugins/cpu/trtkv_ort_ops.cpp``).

A custom-op library in domain ``trtkv``: once registered on a session, ONNX Runtime runs its
fused PagedAttention / KVAppend kernels instead of the models' local function bodies (dozens
of small standard ops per layer). It is compiled on first use with g++ for this CPU
(``-O3 -march=native``; AVX-512 paths where the CPU has them, portable C++ otherwise) and cached by (sources, flags, headers, CPU) under
``$TRTKV_NATIVE_CACHE`` or ``~/.cache/trtkv/native``.

Building needs ONNX Runtime's C/C++ API headers, which no PyPI wheel or Debian package ships;
`scripts/setup.sh` installs them into ``<venv>/include/onnxruntime`` from the npm package
``com.github.asus4.onnxruntime`` (MIT). ``$TRTKV_ORT_INCLUDE`` points elsewhere.

Must not import onnxruntime at module level (the scheduler tests import the backends package).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

from trtkv.build.plugin_library import PLUGINS_SOURCE_DIR
from trtkv.errors import ConfigError

#: ``--native-ops``: auto (use the kernels when they can be built here), on (require them), off.
NATIVE_OPS_MODES = ("auto", "on", "off")
SOURCE = PLUGINS_SOURCE_DIR / "cpu" / "trtkv_ort_ops.cpp"
LIBRARY_NAME = "libtrtkv_ort_ops.so"
_FLAGS = ("-std=c++17", "-O3", "-fno-math-errno", "-shared", "-fPIC", "-fvisibility=hidden",
          "-Wall", "-Wextra", "-Wno-unused-parameter")


def _arch_flags() -> list[str]:
    """``-march``: this CPU (AVX-512 / AVX2 paths where it has them), or ``$TRTKV_NATIVE_ARCH``
    (e.g. ``x86-64``: the portable paths; tests build it to check them)."""
    return [f"-march={os.environ.get('TRTKV_NATIVE_ARCH') or 'native'}"]
HEADERS_HINT = ("ONNX Runtime's C API headers: run scripts/setup.sh (installs them into the venv from npm) or "
                "set TRTKV_ORT_INCLUDE to a directory holding onnxruntime_cxx_api.h")


class NativeOpsUnavailable(RuntimeError):
    """The native kernels cannot be built or loaded here; the message says why and what to do."""


def ort_include_dir() -> Path | None:
    """The directory holding ``onnxruntime_cxx_api.h``: ``$TRTKV_ORT_INCLUDE``, else the venv's."""
    explicit = os.environ.get("TRTKV_ORT_INCLUDE")
    candidates = [Path(explicit)] if explicit else [Path(sys.prefix) / "include" / "onnxruntime"]
    return next((d for d in candidates if (d / "onnxruntime_cxx_api.h").is_file()), None)


def headers_api_version(include: Path) -> int:
    """``ORT_API_VERSION`` of the headers in ``include``."""
    text = (include / "onnxruntime_c_api.h").read_text(errors="replace")
    found = re.search(r"#define\s+ORT_API_VERSION\s+(\d+)", text)
    if not found:
        raise NativeOpsUnavailable(f"no ORT_API_VERSION in {include / 'onnxruntime_c_api.h'}")
    return int(found.group(1))


def _cache_root() -> Path:
    explicit = os.environ.get("TRTKV_NATIVE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trtkv" / "native"


def _cpu_signature() -> bytes:
    """The CPU's model and feature flags (``-march=native`` code is for this CPU only); the
    machine type and processor name where /proc/cpuinfo is missing."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        import platform

        return f"{platform.machine()} {platform.processor()}".encode()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
    return "\n".join(keep).encode()


def _sources() -> list[Path]:
    return [SOURCE, SOURCE.with_name("amx_matmul.h"), PLUGINS_SOURCE_DIR / "emulation" / "emulated_floats.h",
            PLUGINS_SOURCE_DIR / "generated" / "trtkv_ops.h"]


_BUILD_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def native_ops_library() -> Path:
    """Path of the compiled library, building it (a few seconds) on a cache miss.

    Raises:
        NativeOpsUnavailable: no g++, no headers, a runtime older than the headers, or the
            compile failed; the message says which and what to do.
    """
    with _BUILD_LOCK:
        try:
            return _build()
        except OSError as exc:  # an unwritable cache, a failed exec: fall back like any other reason
            raise NativeOpsUnavailable(f"cannot build the native CPU kernels ({exc}); set TRTKV_NATIVE_CACHE "
                                       "to a writable directory") from None


def _build() -> Path:
    import onnxruntime as ort

    gxx = shutil.which("g++")
    if gxx is None:
        raise NativeOpsUnavailable("the native CPU kernels need g++ on PATH (apt install g++)")
    include = ort_include_dir()
    if include is None:
        raise NativeOpsUnavailable(f"the native CPU kernels need {HEADERS_HINT}")
    api = headers_api_version(include)
    runtime_minor = int(ort.__version__.split(".")[1])
    if runtime_minor < api:
        raise NativeOpsUnavailable(
            f"the ONNX Runtime headers in {include} are API {api}, newer than onnxruntime {ort.__version__}; "
            "upgrade onnxruntime or point TRTKV_ORT_INCLUDE at older headers")
    if not SOURCE.is_file():
        raise NativeOpsUnavailable(f"{SOURCE} is missing (a broken install?)")
    flags = [*_FLAGS, *_arch_flags(), f"-I{include}"]
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join([*_FLAGS, *_arch_flags()]).encode())
    for header in sorted(include.glob("*.h")):  # the C and C++ API headers compiled in
        digest.update(header.name.encode())
        digest.update(header.read_bytes())
    version = subprocess.run([gxx, "-dumpfullversion"], capture_output=True, text=True)
    digest.update(version.stdout.encode())
    digest.update(_cpu_signature())
    target = _cache_root() / digest.hexdigest()[:16] / LIBRARY_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{LIBRARY_NAME}.", dir=target.parent)  # unique per build
    os.close(fd)
    tmp = Path(name)
    proc = subprocess.run([gxx, *flags, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise NativeOpsUnavailable(f"compiling the native CPU kernels failed (g++ {proc.returncode}):\n"
                                   f"{proc.stderr[-4000:]}")
    tmp.replace(target)  # atomic: a concurrent process never loads a half-written library
    return target


def check_native_ops_mode(mode: str) -> None:
    """Raises ConfigError unless ``mode`` is one of `NATIVE_OPS_MODES`."""
    if mode not in NATIVE_OPS_MODES:
        raise ConfigError(f"--native-ops must be auto, on or off, got {mode!r}")


def resolve_native_ops(mode: str) -> Path | None:
    """The library to register for ``--native-ops`` ``mode``: None for ``off``, and for
    ``auto`` where it cannot be built here.

    Raises:
        ConfigError: ``on`` and the library cannot be built (says why), or an unknown mode.
    """
    check_native_ops_mode(mode)
    if mode == "off":
        return None
    try:
        return native_ops_library()
    except NativeOpsUnavailable as exc:
        if mode == "on":
            raise ConfigError(f"--native-ops on: {exc}") from None
        return None


def native_ops_reason() -> str:
    """Why the native kernels are unavailable here ('' when they are available)."""
    try:
        native_ops_library()
    except NativeOpsUnavailable as exc:
        return str(exc)
    return ""


__all__ = ["NATIVE_OPS_MODES", "NativeOpsUnavailable", "check_native_ops_mode", "native_ops_library", "native_ops_reason",
           "ort_include_dir", "resolve_native_ops"]

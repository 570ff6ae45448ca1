"""Locating the trtkv native libraries: the TensorRT plugins and the kernels' C ABI.

Search order for each library: an explicit path, an environment variable, then the CMake build
directory of this checkout (``build/plugins/``). Must not import tensorrt or torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from trtkv.errors import BackendUnavailableError

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGINS_SOURCE_DIR = REPO_ROOT / "plugins"
DEFAULT_BUILD_DIR = REPO_ROOT / "build" / "plugins"

PLUGIN_LIBRARY_NAME = "libtrtkv_plugins.so"
KERNELS_LIBRARY_NAME = "libtrtkv_kernels.so"

BUILD_HINT = (
    "build it with `cmake -S plugins -B build/plugins -DTENSORRT_ROOT=<TensorRT dir> && "
    "cmake --build build/plugins -j` (needs nvcc and the TensorRT headers)"
)


def find_plugin_library(explicit: str = "") -> Path:
    """Path of libtrtkv_plugins.so.

    Raises:
        BackendUnavailableError: not found; the message says how to build it.
    """
    return _find(explicit, "TRTKV_PLUGIN_LIB", PLUGIN_LIBRARY_NAME)


def find_kernels_library(explicit: str = "") -> Path:
    """Path of libtrtkv_kernels.so (the C ABI over the CUDA kernels, no TensorRT)."""
    return _find(explicit, "TRTKV_KERNELS_LIB", KERNELS_LIBRARY_NAME)


def _find(explicit: str, env_var: str, name: str) -> Path:
    candidates = [Path(explicit)] if explicit else []
    if os.environ.get(env_var):
        candidates.append(Path(os.environ[env_var]))
    candidates.append(DEFAULT_BUILD_DIR / name)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    tried = ", ".join(str(p) for p in candidates)
    raise BackendUnavailableError(f"{name} not found (tried {tried}); {BUILD_HINT}, or set ${env_var}")

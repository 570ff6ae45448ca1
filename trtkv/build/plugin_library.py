"""Locating the trtkv native libraries: the TensorRT plugins and the kernels' C ABI.

Search order for each library: an explicit path, an environment variable, then the CMake build
directory of this checkout (``build/plugins/``). Must not import tensorrt or torch.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from trtkv.errors import BackendUnavailableError

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The CUDA/TensorRT sources: this checkout's ``plugins/``, else the copy an installed wheel
#: ships as package data (``trtkv/_plugins``, copied from ``plugins/`` by setup.py at build time).
PLUGINS_SOURCE_DIR = next(
    (d for d in (REPO_ROOT / "plugins", Path(__file__).resolve().parents[1] / "_plugins")
     if (d / "CMakeLists.txt").is_file()),
    REPO_ROOT / "plugins",
)
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


def load_plugins_module(name: str) -> ModuleType:
    """Import ``plugins/<name>.py`` (build and check scripts that live beside the CUDA sources,
    outside the package), once per process."""
    module_name = f"trtkv_plugins_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, PLUGINS_SOURCE_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module

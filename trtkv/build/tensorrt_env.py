"""Lazy access to TensorRT, shared by `trtkv build` and the TensorRT runtime backend.

Two flavors behind one switch, with the same Python API for everything trtkv uses:

- ``trt``: full TensorRT (module ``tensorrt``; datacenter GPUs incl. Hopper). Building needs
  a GPU.
- ``rtx``: TensorRT for RTX (``tensorrt_rtx_libs`` then ``tensorrt_rtx_bindings``; real wheels
  on PyPI, the ``rtx`` extra). Builds ahead of time with no GPU present, for compute
  capabilities 7.5 / 8.0 / 8.6 / 8.9 / 12.x (not Hopper).

Nothing here imports tensorrt at module import time; `import_tensorrt()` does, and turns a
missing installation into one actionable `BackendUnavailableError` line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from trtkv.errors import BackendUnavailableError

INSTALL_HINT = (
    "install TensorRT on a machine with an NVIDIA GPU and driver: "
    "`pip install 'trtkv[gpu]'` with NVIDIA's Python package index as an extra index (TensorRT install guide) "
    "(the tensorrt packages on PyPI alone are stubs that fetch from NVIDIA's index)"
)


RTX_INSTALL_HINT = "pip install 'trtkv[rtx]' (TensorRT for RTX: tensorrt-rtx-cu13-libs and -bindings)"
FLAVORS = ("auto", "trt", "rtx")


def import_tensorrt(flavor: str = "trt") -> Any:
    """The TensorRT module of ``flavor`` ("trt" or "rtx"; "auto": trt if it imports, else rtx).

    Raises:
        BackendUnavailableError: that TensorRT (or its native libraries) cannot be imported.
    """
    if flavor == "auto":
        try:
            return import_tensorrt("trt")
        except BackendUnavailableError as trt_error:
            try:
                return import_tensorrt("rtx")
            except BackendUnavailableError:
                raise BackendUnavailableError(
                    f"neither TensorRT nor TensorRT for RTX is installed: {RTX_INSTALL_HINT} builds on any "
                    f"machine; for full TensorRT: {INSTALL_HINT}"
                ) from trt_error
    if flavor == "rtx":
        try:
            import tensorrt_rtx_bindings as rtx
            import tensorrt_rtx_libs  # noqa: F401  (loads libtensorrt_rtx before the bindings)
        except Exception as exc:
            raise BackendUnavailableError(
                f"TensorRT for RTX is not available ({exc.__class__.__name__}: {exc}); {RTX_INSTALL_HINT}") from exc
        return rtx
    if flavor != "trt":
        raise BackendUnavailableError(f"unknown TensorRT flavor {flavor!r}; use one of {', '.join(FLAVORS)}")
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, OSError (missing libnvinfer), stub wheels' errors
        raise BackendUnavailableError(f"TensorRT is not available ({exc.__class__.__name__}: {exc}); {INSTALL_HINT}") from exc
    if not hasattr(trt, "Builder"):
        raise BackendUnavailableError(f"the installed tensorrt package is a stub without libraries; {INSTALL_HINT}")
    return trt


def flavor_of(trt: Any) -> str:
    """"rtx" for TensorRT for RTX's module, else "trt"."""
    return "rtx" if trt.__name__.startswith("tensorrt_rtx") else "trt"


def make_logger(trt: Any, verbose: bool = False) -> Any:
    """A TensorRT logger that keeps errors (for messages) and prints warnings or worse."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.engine_layers = ""

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)
            if msg.startswith("Layers:"):
                self.engine_layers = msg  # the built engine's layer list (verbose, detailed profiling)
            if verbose or severity <= trt.ILogger.Severity.WARNING:
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return _Logger()


def load_plugin_library(trt: Any, path: Path) -> Any:
    """Register libtrtkv_plugins.so's creators (namespace "trtkv") with TensorRT's registry."""
    registry = trt.get_plugin_registry()
    try:
        return registry.load_library(str(path))
    except Exception as exc:
        raise BackendUnavailableError(f"TensorRT could not load the trtkv plugins from {path}: {exc}") from exc


def has_cuda_device() -> bool:
    """Whether the CUDA driver (libcuda) loads and sees a GPU; imports nothing."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def require_cuda_device(trt: Any, logger: Any) -> Any:
    """A TensorRT builder. Full TensorRT needs a visible CUDA device; TensorRT for RTX does not.

    Raises:
        BackendUnavailableError: no GPU / driver (full TensorRT).
    """
    builder: Any = None
    error: Exception | None = None
    try:
        builder = trt.Builder(logger)
    except Exception as exc:
        error = exc
    if builder is None:
        detail = f" ({error})" if error else ""
        raise BackendUnavailableError(
            f"TensorRT found no usable CUDA GPU{detail}; run on a machine with an NVIDIA GPU "
            "(Ampere or newer) and driver, or use --backend onnxruntime on CPU"
        )
    return builder

"""Lazy access to TensorRT, shared by `trtkv build` and the TensorRT runtime backend.

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


def import_tensorrt() -> Any:
    """The `tensorrt` module.

    Raises:
        BackendUnavailableError: TensorRT (or its native libraries) cannot be imported.
    """
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, OSError (missing libnvinfer), stub wheels' errors
        raise BackendUnavailableError(f"TensorRT is not available ({exc.__class__.__name__}: {exc}); {INSTALL_HINT}") from exc
    if not hasattr(trt, "Builder"):
        raise BackendUnavailableError(f"the installed tensorrt package is a stub without libraries; {INSTALL_HINT}")
    return trt


def make_logger(trt: Any, verbose: bool = False) -> Any:
    """A TensorRT logger that keeps errors (for messages) and prints warnings or worse."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)
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


def require_cuda_device(trt: Any, logger: Any) -> Any:
    """A TensorRT builder, which needs a visible CUDA device.

    Raises:
        BackendUnavailableError: no GPU / driver.
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

"""`trtkv build`: TensorRT engines from exported models, with the trtkv plugins.

Owns the build options (`BuildConfig`), the engine directory layout and locating the native
plugin/kernel libraries. Imports tensorrt only inside `build_engine`; never imports torch.
The engine builder (and onnx) load on first use, so `trtkv --help` stays fast.
"""

from __future__ import annotations

from typing import Any

from trtkv.build.config import BuildConfig

__all__ = ["BUILD_INFO_FILE", "ENGINE_FILE", "BuildConfig", "build_engine", "profile_shapes"]


def __getattr__(name: str) -> Any:
    if name in ("BUILD_INFO_FILE", "ENGINE_FILE", "build_engine", "profile_shapes"):
        from trtkv.build import engine_builder

        return getattr(engine_builder, name)
    raise AttributeError(f"module 'trtkv.build' has no attribute {name!r}")

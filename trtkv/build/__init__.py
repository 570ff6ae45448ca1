"""`trtkv build`: TensorRT engines from exported models, with the trtkv plugins.

Owns the build options (`BuildConfig`), the engine directory layout and locating the native
plugin/kernel libraries. Imports tensorrt only inside `build_engine`; never imports torch.
"""

from __future__ import annotations

from trtkv.build.config import BuildConfig
from trtkv.build.engine_builder import BUILD_INFO_FILE, ENGINE_FILE, build_engine, profile_shapes

__all__ = ["BUILD_INFO_FILE", "ENGINE_FILE", "BuildConfig", "build_engine", "profile_shapes"]

"""Build hook: ship ``plugins/`` (CUDA kernels, TensorRT wrappers, CMake) in the wheel as
``trtkv/_plugins`` so `trtkv build` finds the sources outside a checkout. Metadata lives in
pyproject.toml; this file only copies the sources at build time (no copy is kept in git)."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PLUGINS_DIR = Path(__file__).resolve().parent / "plugins"
#: Build outputs and caches that may sit in a working tree; never shipped.
_IGNORE = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.so", "*.o", "*.a", "build")


class BuildPyWithPlugins(build_py):
    """build_py, plus plugins/ copied to <build_lib>/trtkv/_plugins (not in editable mode,
    where `trtkv.build.plugin_library` reads the checkout's plugins/ directly)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        if not (PLUGINS_DIR / "CMakeLists.txt").is_file():
            raise FileNotFoundError(f"{PLUGINS_DIR} lacks CMakeLists.txt; build from a checkout or its sdist")
        target = Path(self.build_lib) / "trtkv" / "_plugins"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(PLUGINS_DIR, target, ignore=_IGNORE)


setup(cmdclass={"build_py": BuildPyWithPlugins})

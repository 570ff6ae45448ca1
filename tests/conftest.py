"""Shared fixtures: tiny random-weight HF checkpoints and their trtkv exports, made once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import FAMILIES, make_checkpoint


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[tuple, Path] = {}

    def make(family: str, **kw) -> Path:
        key = (family, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = make_checkpoint(tmp_path_factory.mktemp(f"hf_{family}"), family, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def exported_factory(tmp_path_factory: pytest.TempPathFactory, checkpoint_factory):
    from trtkv.export.exporter import ExportConfig, export

    cache: dict[tuple, Path] = {}

    def make(family: str, dtype: str = "fp32", kv_dtype: str = "auto", block_size: int = 16, **kw) -> Path:
        key = (family, dtype, kv_dtype, block_size, tuple(sorted(kw.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ex_{family}_{dtype}")
            export(checkpoint_factory(family, **kw), out,
                   ExportConfig(dtype=dtype, kv_dtype=kv_dtype, block_size=block_size, progress=False))
            cache[key] = out
        return cache[key]

    return make


ALL_FAMILIES = sorted(FAMILIES)


def _has_cuda_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests skip cleanly without a CUDA device (each test may add its own finer skip);
    the nvcc compile tests count as ``slow`` (CI runs them; ``-m 'not slow'`` leaves them out)."""
    gpu = None
    for item in items:
        if item.get_closest_marker("gpu"):
            gpu = _has_cuda_gpu() if gpu is None else gpu
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU visible to torch (CUDA build)"))
        if item.nodeid.startswith("tests/plugins/test_compile.py"):
            item.add_marker(pytest.mark.slow)

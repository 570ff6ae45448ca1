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

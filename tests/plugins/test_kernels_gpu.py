"""GPU numerics of the trtkv kernels through the C ABI, against the float64 NumPy reference.

Marker ``gpu``: skipped cleanly without nvcc, torch or a CUDA device. Builds
libtrtkv_kernels.so for the local GPU (``-arch=native``) once per session.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pytest

from trtkv.build.plugin_library import load_plugins_module

pytestmark = pytest.mark.gpu


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


if shutil.which("nvcc") is None or not _cuda_available():
    pytest.skip("needs nvcc, torch with CUDA and an NVIDIA GPU", allow_module_level=True)

checks = load_plugins_module("kernel_checks")
nvcc_build = load_plugins_module("nvcc_build")


@pytest.fixture(scope="module")
def lib() -> Any:
    path, _ = nvcc_build.build_kernels_library(("native",))
    return checks.KernelLib(str(path))


@pytest.mark.parametrize("case", checks.default_attention_cases(), ids=lambda c: c.name)
def test_paged_attention_matches_reference(lib: Any, case: Any) -> None:
    result = checks.run_attention_case(lib, case, np.random.default_rng(0))
    assert result.ok, f"{case.name}: error {result.error:.2e} > {result.tolerance:.0e} ({result.detail})"


@pytest.mark.parametrize("name,compute,kv,per_head", checks.default_kv_append_cases(), ids=lambda v: str(v))
def test_kv_append_matches_reference(lib: Any, name: str, compute: str, kv: str, per_head: bool) -> None:
    result = checks.run_kv_append_case(lib, name, compute, kv, np.random.default_rng(1), per_head_scale=per_head)
    assert result.ok, f"{name}: {result.detail}"


@pytest.mark.parametrize("name,compute,groups,head_dim", checks.default_kv_append_dynamic_cases(),
                         ids=lambda v: str(v))
def test_kv_append_dynamic_scales_match_reference(lib: Any, name: str, compute: str, groups: int,
                                                  head_dim: int) -> None:
    result = checks.run_kv_append_case(lib, name, compute, "int8", np.random.default_rng(1), per_head_scale=False,
                                       head_dim=head_dim, scale_groups=groups)
    assert result.ok, f"{name}: {result.detail}"


def test_split_kv_is_chosen_for_long_decodes(lib: Any) -> None:
    case = checks.AttentionCase("long decode", ((4000, 1), (4000, 1)))
    x = checks.make_attention_inputs(case, np.random.default_rng(2))
    t = {k: checks.to_device(v) for k, v in x.items() if k in ("query_start_loc", "context_lens", "block_tables")}
    t["query"] = checks.to_device(x["query"], "fp16")
    t["kv_cache"] = checks.to_device(x["kv_cache"], "fp16")
    assert lib.num_splits(t) > 1

"""The KV dtype registry (`trtkv.ops.schema.KV_DTYPE_SPECS`) agrees with the libraries it names."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from trtkv.manifest import Manifest
from trtkv.ops.reference import KV_NUMPY_DTYPES, dequantize, quantize
from trtkv.ops.schema import (
    DEFAULT_KV_SCALES,
    KV_DTYPE_SPECS,
    KV_DTYPES,
    QUANTIZED_KV_DTYPES,
    kv_dtype_spec,
)


@pytest.mark.parametrize("name", KV_DTYPES)
def test_each_entry_matches_numpy_torch_and_onnx(name: str) -> None:
    d = KV_DTYPE_SPECS[name]
    np_dtype = KV_NUMPY_DTYPES[name]
    assert np_dtype.itemsize == d.itemsize == getattr(torch, d.torch).itemsize
    assert helper.tensor_dtype_to_np_dtype(d.onnx) == np_dtype
    assert (name in QUANTIZED_KV_DTYPES) == d.quantized


def test_quantized_entries_bound_their_codes() -> None:
    big = np.array([1e6, -1e6], np.float32)
    for name in QUANTIZED_KV_DTYPES:
        codes = quantize(big, np.float32(1.0), name)
        assert np.abs(dequantize(codes, np.float32(1.0), name)).max() == KV_DTYPE_SPECS[name].code_max
    assert DEFAULT_KV_SCALES == {"fp8": 1.0, "int8": 1 / 16}
    assert float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max) == KV_DTYPE_SPECS["fp8"].code_max
    with pytest.raises(ValueError, match="not a quantized"):
        _ = kv_dtype_spec("float16").code_max
    assert TensorProto.FLOAT8E4M3FN == kv_dtype_spec("e4m3").onnx


def test_bytes_per_token_follow_the_registry() -> None:
    fields = dict(architecture="llama", num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, hidden_size=32,
                  vocab_size=64, max_position_embeddings=64, block_size=16, dtype="fp32",
                  k_scales=((1.0,),) * 2, v_scales=((1.0,),) * 2, sliding_windows=(0, 0), eos_token_ids=(0,),
                  bos_token_id=None)
    for name in KV_DTYPES:
        m = Manifest(**fields, kv_dtype=name)  # type: ignore[arg-type]
        assert m.kv_bytes_per_token() == 2 * 2 * 2 * 8 * KV_DTYPE_SPECS[name].itemsize

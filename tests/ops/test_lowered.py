"""The shape-static PagedAttention body (what TensorRT builds without plugins) vs the reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.ops.opgraph import ops_session
from tests.ops.test_ops import BATCHES, _mixed_batch
from trtkv.ops import reference as R
from trtkv.ops.lowered import lowered_paged_attention_function

SCALES = {"int8": np.array([0.03, 0.05], np.float32), "fp8": np.array([0.01, 0.02], np.float32),
          "fp8_tensor": np.array([0.015], np.float32)}


def _run(kv_dtype: str, batch: dict, kv_scale: np.ndarray, **kwargs):
    scale = kv_scale
    pool = R.quantize(batch["pool"], scale, kv_dtype)
    feeds = dict(query=batch["q"], key=batch["k"], value=batch["v"], slot_mapping=batch["slots"],
                 kv_cache=pool.view(np.int8) if kv_dtype == "fp8" else pool,
                 query_start_loc=batch["qsl"], context_lens=batch["ctx"], block_tables=batch["tables"],
                 k_scale=scale, v_scale=scale)
    out, ks, vs = ops_session(kv_dtype, lowered=True, num_scales=scale.size, **kwargs).run(None, feeds)
    rks, rvs = R.kv_append(batch["k"], batch["v"], batch["slots"], pool.copy(), scale, scale)
    np.testing.assert_array_equal(ks, rks.view(ks.dtype))
    np.testing.assert_array_equal(vs, rvs.view(vs.dtype))
    ref = R.paged_attention(batch["q"], rks, rvs, pool, batch["qsl"], batch["ctx"], batch["tables"],
                            scale, scale, **kwargs)
    return out, ref


@pytest.mark.parametrize("kwargs", [{}, {"sliding_window": 5}, {"softcap": 3.0, "scale": 0.2}])
@pytest.mark.parametrize("kv_dtype", ["fp32", "fp16", "int8", "fp8", "fp8_tensor"])
@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_lowered_body_matches_reference(kv_dtype, kwargs, batch):
    b = _mixed_batch(np.random.default_rng(2), *BATCHES[batch], dtype=np.float32)
    out, ref = _run(kv_dtype.split("_")[0], b, SCALES.get(kv_dtype, np.ones(1, np.float32)), **kwargs)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("num_kv_heads", [4, 1])  # MHA, MQA (the batches above are GQA 2:1)
def test_lowered_body_head_layouts(num_kv_heads):
    b = _mixed_batch(np.random.default_rng(3), [4, 0, 7], [1, 6, 2], num_kv_heads=num_kv_heads, dtype=np.float32)
    out, ref = _run("fp32", b, np.ones(1, np.float32))
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)


def test_lowered_body_is_shape_static():
    """No op TensorRT-RTX cannot build without plugins, and no control flow."""
    body = lowered_paged_attention_function("fp16")
    ops = {node.op_type for node in body.node}
    assert not ops & {"NonZero", "If", "Loop", "Scan", "Unique", "Compress"}, ops
    onnx.checker.check_function(body)

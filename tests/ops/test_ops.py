"""The op contract: reference vs dense attention, ONNX function bodies vs reference."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from tests.ops.opgraph import ops_session
from trtkv.ops import reference as R
from trtkv.ops.schema import KV_APPEND, OPS, PAGED_ATTENTION


def _mixed_batch(rng, ctx_lens, new_lens, *, num_heads=4, num_kv_heads=2, head_dim=48,
                 block_size=4, num_blocks=64, dtype=np.float64):
    """A packed step mixing prefill chunks (over cached history) and decode tokens."""
    num_seqs = len(ctx_lens)
    width = max(-(-(c + n) // block_size) for c, n in zip(ctx_lens, new_lens, strict=True))
    tables = np.zeros((num_seqs, width), np.int32)
    free = list(rng.permutation(num_blocks))
    for s, (c, n) in enumerate(zip(ctx_lens, new_lens, strict=True)):
        for j in range(-(-(c + n) // block_size)):
            tables[s, j] = free.pop()
    full_k = [rng.standard_normal((c + n, num_kv_heads, head_dim)) for c, n in zip(ctx_lens, new_lens, strict=True)]
    full_v = [rng.standard_normal((c + n, num_kv_heads, head_dim)) for c, n in zip(ctx_lens, new_lens, strict=True)]
    full_q = [rng.standard_normal((c + n, num_heads, head_dim)) for c, n in zip(ctx_lens, new_lens, strict=True)]
    pool = np.zeros((num_blocks, 2, block_size, num_kv_heads, head_dim), dtype)
    for s, c in enumerate(ctx_lens):
        for p in range(c):
            b, o = tables[s, p // block_size], p % block_size
            pool[b, 0, o], pool[b, 1, o] = full_k[s][p], full_v[s][p]
    q = np.concatenate([full_q[s][c:] for s, c in enumerate(ctx_lens)]).astype(dtype)
    k = np.concatenate([full_k[s][c:] for s, c in enumerate(ctx_lens)]).astype(dtype)
    v = np.concatenate([full_v[s][c:] for s, c in enumerate(ctx_lens)]).astype(dtype)
    qsl = np.concatenate([[0], np.cumsum(new_lens)]).astype(np.int32)
    slots = np.array([tables[s, (c + i) // block_size] * block_size + (c + i) % block_size
                      for s, (c, n) in enumerate(zip(ctx_lens, new_lens, strict=True)) for i in range(n)], np.int64)
    return dict(q=q, k=k, v=v, pool=pool, qsl=qsl, ctx=np.array(ctx_lens, np.int32), tables=tables,
                slots=slots, full_q=full_q, full_k=full_k, full_v=full_v)


def test_schema_tables_are_consistent():
    assert set(OPS) == {"PagedAttention", "KVAppend"}
    assert PAGED_ATTENTION.input_names[:4] == ("query", "key", "value", "kv_cache")
    assert KV_APPEND.output_names == ("key_stored", "value_stored")
    assert PAGED_ATTENTION.input_names[-2:] == KV_APPEND.input_names[-2:] == ("k_scale", "v_scale")


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_reference_equals_dense_causal_attention(num_kv_heads):
    rng = np.random.default_rng(0)
    b = _mixed_batch(rng, [0, 5, 9, 13], [7, 1, 4, 1], num_kv_heads=num_kv_heads)
    one = np.ones(1, np.float32)
    out = R.paged_attention(b["q"], b["k"], b["v"], b["pool"], b["qsl"], b["ctx"], b["tables"], one, one)
    row = 0
    for s, c in enumerate(b["ctx"]):
        dense = R.dense_causal_attention(b["full_q"][s], b["full_k"][s], b["full_v"][s])
        n = b["full_q"][s].shape[0] - c
        np.testing.assert_allclose(out[row:row + n], dense[c:], rtol=1e-12, atol=1e-12)
        row += n


def test_kv_append_writes_only_the_new_slots():
    rng = np.random.default_rng(1)
    b = _mixed_batch(rng, [3, 0], [2, 5], dtype=np.float32)
    pool = b["pool"].astype(np.float32)
    before = pool.copy()
    one = np.ones(1, np.float32)
    R.kv_append(b["k"].astype(np.float32), b["v"].astype(np.float32), b["slots"], pool, one, one)
    changed = np.argwhere((pool != before).any(axis=(1, 3, 4)))
    written = {(int(s) // 4, int(s) % 4) for s in b["slots"]}
    assert {(int(blk), int(off)) for blk, off in changed} == written


BATCHES = {
    "mixed": ([6, 0, 11, 2, 0], [1, 9, 3, 1, 1]),
    "decode_only": ([5, 13, 1], [1, 1, 1]),
    "prefill_only": ([0, 4, 9], [3, 2, 7]),
}


@pytest.mark.parametrize("kwargs", [{}, {"sliding_window": 5}, {"softcap": 3.0, "scale": 0.2}])
@pytest.mark.parametrize("kv_dtype", ["fp32", "fp16", "int8", "fp8"])
@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_onnx_function_bodies_match_reference(kv_dtype, kwargs, batch):
    rng = np.random.default_rng(2)
    b = _mixed_batch(rng, *BATCHES[batch], dtype=np.float32)
    # Per-KV-head scales for the quantized pools; fp8 codes travel as uint8 on ONNX Runtime.
    scale = {"int8": np.array([0.03, 0.05], np.float32), "fp8": np.array([0.01, 0.02], np.float32)}.get(
        kv_dtype, np.ones(1, np.float32))
    pool = R.quantize(b["pool"], scale, kv_dtype)
    feed_pool = pool.view(np.uint8) if kv_dtype == "fp8" else pool
    feeds = dict(query=b["q"], key=b["k"], value=b["v"], slot_mapping=b["slots"], kv_cache=feed_pool,
                 query_start_loc=b["qsl"], context_lens=b["ctx"], block_tables=b["tables"],
                 k_scale=scale, v_scale=scale)
    out, ks, vs = ops_session(kv_dtype, **kwargs).run(None, feeds)
    ref_pool = pool.copy()
    rks, rvs = R.kv_append(b["k"], b["v"], b["slots"], ref_pool, scale, scale)
    np.testing.assert_array_equal(ks, rks.view(ks.dtype))
    np.testing.assert_array_equal(vs, rvs.view(vs.dtype))
    ref = R.paged_attention(b["q"], rks, rvs, pool, b["qsl"], b["ctx"], b["tables"], scale, scale, **kwargs)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)


def test_quantize_edge_values_match_ml_dtypes():
    one = np.ones(1, np.float32)
    f8 = ml_dtypes.float8_e4m3fn
    edges = np.array([0.0, -0.0, 2.0**-9, 2.0**-7, 448.0, -448.0, 449.0, 465.0, 1e6, -1e6, 0.3, 17.5],
                     np.float32).reshape(-1, 1, 1)
    q = R.quantize(edges, one, "fp8")
    expected = np.clip(edges, -448, 448).astype(f8)  # saturate, then RNE to E4M3
    np.testing.assert_array_equal(q.view(np.uint8), expected.view(np.uint8))
    assert float(q[4, 0, 0]) == 448.0 and float(q[8, 0, 0]) == 448.0 and float(q[9, 0, 0]) == -448.0
    assert float(q[2, 0, 0]) == 2.0**-9  # smallest E4M3 subnormal is exact
    assert np.isnan(float(R.quantize(np.full((1, 1, 1), np.nan, np.float32), one, "fp8")[0, 0, 0]))
    assert float(R.quantize(np.full((1, 1, 1), np.inf, np.float32), one, "fp8")[0, 0, 0]) == 448.0
    i8 = R.quantize(np.array([0.5, 1.5, 2.5, -0.5, -2.5, 126.6, 127.5, 300, -300, np.nan, np.inf],
                             np.float32).reshape(-1, 1, 1), one, "int8").ravel()
    np.testing.assert_array_equal(i8, [0, 2, 2, 0, -2, 127, 127, 127, -127, 0, 127])  # RNE, +-127
    codes = R.quantize(np.linspace(-5, 5, 11, dtype=np.float32).reshape(-1, 1, 1), np.array([0.5], np.float32), "int8")
    np.testing.assert_array_equal(R.dequantize(codes, np.array([0.5], np.float32), "int8").ravel(), np.linspace(-5, 5, 11))


def test_dynamic_scales_round_trip_exactly():
    """A scale per (token, KV head) row: decoding then re-encoding gives the same codes; the
    exponent is the smallest that holds the row (codes reach at least 127 / 2**(1/8))."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((7, 3, 64)) * np.array([1e-3, 1.0, 500.0])[None, :, None]).astype(np.float32)
    x[0, 0] = 0.0  # an all-zero row
    x[1, 1, 5] = np.nan
    q = R.quantize_dynamic(x)
    assert q.shape == (7, 3, 65) and q.dtype == np.int8
    np.testing.assert_array_equal(R.quantize_dynamic(R.dequantize_dynamic(q)), q)
    q2 = R.quantize_dynamic(x, 2)  # two groups of 32: each its own scale
    assert q2.shape == (7, 3, 66)
    np.testing.assert_array_equal(R.quantize_dynamic(R.dequantize_dynamic(q2, 2), 2), q2)
    ok = ~np.isnan(x)
    assert np.abs(R.dequantize_dynamic(q2, 2) - x)[ok].mean() < np.abs(R.dequantize_dynamic(q) - x)[ok].mean()
    live = np.abs(q[..., :-1].astype(np.int32)).max(axis=-1)
    assert (live[1:] >= 116).all() and (live[1:] <= 127).all()
    assert q[0, 0, -1] == -128 and not R.dequantize_dynamic(q)[0, 0].any()
    y, ok = R.dequantize_dynamic(q), ~np.isnan(x)
    err = np.abs(np.where(ok, y - x, 0)).max(axis=-1) / np.abs(np.where(ok, x, 0)).max(axis=-1).clip(1e-30)
    assert err[1:].max() < 0.5 / 116 + 1e-6  # half a code step of the row's own range


@pytest.mark.parametrize("lowered", [False, True])  # the ONNX Runtime bodies / the shape-static TensorRT ones
@pytest.mark.parametrize("groups", [1, 3])  # scales per row of head_dim 48
@pytest.mark.parametrize("kwargs", [{}, {"sliding_window": 5}])
@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_dynamic_scale_bodies_match_reference(kwargs, batch, groups, lowered):
    rng = np.random.default_rng(4)
    b = _mixed_batch(rng, *BATCHES[batch], dtype=np.float32)
    pool = R.quantize_dynamic(b["pool"] * 40, groups)  # values far past int8's default-scale range
    one = np.ones(1, np.float32)
    feeds = dict(query=b["q"], key=b["k"] * 40, value=b["v"] * 40, slot_mapping=b["slots"], kv_cache=pool,
                 query_start_loc=b["qsl"], context_lens=b["ctx"], block_tables=b["tables"], k_scale=one, v_scale=one)
    out, ks, vs = ops_session("int8", dynamic=True, lowered=lowered, **kwargs).run(None, feeds)
    ref_pool = pool.copy()
    rks, rvs = R.kv_append(b["k"] * 40, b["v"] * 40, b["slots"], ref_pool, one, one)
    np.testing.assert_array_equal(ks, rks)
    np.testing.assert_array_equal(vs, rvs)
    ref = R.paged_attention(b["q"], rks, rvs, pool, b["qsl"], b["ctx"], b["tables"], one, one, **kwargs)
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-4)  # values 40x: float32 sums of larger terms
    # the codes hold the values the default static int8 scale (1/16) saturates
    np.testing.assert_allclose(R.dequantize_dynamic(rks, groups), b["k"] * 40,
                               atol=0.5 / 116 * np.abs(b["k"] * 40).max())
    static = R.dequantize(R.quantize(b["k"] * 40, np.array([1 / 16], np.float32), "int8"), np.array([1 / 16]), "int8")
    assert np.abs(static - b["k"] * 40).max() > 50  # clipped at +-7.9

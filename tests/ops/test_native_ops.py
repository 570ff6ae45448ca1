"""The native CPU kernels (plugins/cpu/trtkv_ort_ops.cpp) against the reference ops.

They are built here with g++ against ONNX Runtime's headers (scripts/setup.sh installs them);
CI must have them, so there a build failure fails instead of skipping.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from tests.conftest import require_native_ops
from tests.ops.opgraph import ops_session
from tests.ops.test_ops import _mixed_batch
from trtkv.ops import reference as R
from trtkv.runtime.backends.native_ops import native_ops_library


@pytest.fixture(autouse=True)
def _native() -> None:
    require_native_ops()


BATCHES = {
    "mixed": ([6, 0, 11, 2, 0], [1, 9, 3, 1, 1]),
    "decode_only": ([5, 13, 1], [1, 1, 1]),
    "prefill_only": ([0, 4, 9], [3, 2, 7]),
    # past one query tile (32) and one key chunk (64), over many blocks
    "long": ([40, 0, 100], [37, 50, 1]),
}
SCALES = {"int8": np.array([0.03, 0.05], np.float32), "fp8": np.array([0.01, 0.02], np.float32)}


def _value(array: np.ndarray, kv_dtype: str, *, as_pool: bool = False) -> ort.OrtValue:
    """Zero-copy OrtValue (bf16 as its bits with the bf16 type; fp8 pools as uint8 codes)."""
    if kv_dtype == "bf16":
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), TensorProto.BFLOAT16)
    if kv_dtype == "fp8":
        if as_pool:
            return ort.OrtValue.ortvalue_from_numpy(array.view(np.uint8))
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint8), TensorProto.FLOAT8E4M3FN)
    return ort.OrtValue.ortvalue_from_numpy(array)


def _run(session: ort.InferenceSession, b: dict, pool: np.ndarray, scale: np.ndarray, kv_dtype: str,
         key=None, value=None, query=None):
    feeds = dict(query=b["q"] if query is None else query, key=b["k"] if key is None else key,
                 value=b["v"] if value is None else value, slot_mapping=b["slots"],
                 query_start_loc=b["qsl"], context_lens=b["ctx"], block_tables=b["tables"],
                 k_scale=scale, v_scale=scale)
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(array))
    binding.bind_ortvalue_input("kv_cache", _value(pool, kv_dtype, as_pool=True))
    q = feeds["query"]
    out = np.empty(q.shape, q.dtype)
    stored_shape = (feeds["key"].shape[0], pool.shape[3], pool.shape[4])
    ks, vs = np.empty(stored_shape, pool.dtype), np.empty(stored_shape, pool.dtype)
    binding.bind_ortvalue_output("output", ort.OrtValue.ortvalue_from_numpy(out))
    binding.bind_ortvalue_output("key_stored.0", _value(ks, kv_dtype))
    binding.bind_ortvalue_output("value_stored.0", _value(vs, kv_dtype))
    session.run_with_iobinding(binding)
    return out, ks, vs


def _session(kv_dtype: str, **kwargs) -> ort.InferenceSession:
    return ops_session(kv_dtype, native=True, **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"sliding_window": 5}, {"softcap": 3.0, "scale": 0.2}])
@pytest.mark.parametrize("kv_dtype", ["fp32", "fp16", "bf16", "int8", "fp8"])
@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_native_kernels_match_reference(kv_dtype, kwargs, batch):
    rng = np.random.default_rng(2)
    b = _mixed_batch(rng, *BATCHES[batch], dtype=np.float32)
    scale = SCALES.get(kv_dtype, np.ones(1, np.float32))
    pool = R.quantize(b["pool"], scale, kv_dtype)
    out, ks, vs = _run(_session(kv_dtype, **kwargs), b, pool, scale, kv_dtype)
    ref_pool = pool.copy()
    rks, rvs = R.kv_append(b["k"], b["v"], b["slots"], ref_pool, scale, scale)
    np.testing.assert_array_equal(ks.view(np.uint8), rks.view(np.uint8))  # quantize-on-write: bit-exact
    np.testing.assert_array_equal(vs.view(np.uint8), rvs.view(np.uint8))
    ref = R.paged_attention(b["q"], rks, rvs, pool, b["qsl"], b["ctx"], b["tables"], scale, scale, **kwargs)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)
    assert not np.array_equal(pool, ref_pool)  # (the pool itself is left alone without write_pool)


@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim"), [(4, 4, 80), (6, 2, 64), (8, 1, 24), (4, 2, 130)])
def test_native_head_layouts(num_heads, num_kv_heads, head_dim):
    """MHA / GQA / MQA, head dims that are not multiples of the 16-wide dot product."""
    rng = np.random.default_rng(5)
    b = _mixed_batch(rng, [9, 0, 33], [1, 20, 2], num_heads=num_heads, num_kv_heads=num_kv_heads,
                     head_dim=head_dim, block_size=8, dtype=np.float32)
    one = np.ones(1, np.float32)
    out, ks, vs = _run(_session("fp32"), b, b["pool"], one, "fp32")
    ref = R.paged_attention(b["q"], ks, vs, b["pool"], b["qsl"], b["ctx"], b["tables"], one, one)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)


def test_native_fp16_compute():
    rng = np.random.default_rng(6)
    b = _mixed_batch(rng, *BATCHES["mixed"], dtype=np.float32)
    q, k, v = (b[x].astype(np.float16) for x in ("q", "k", "v"))
    pool = b["pool"].astype(np.float16)
    one = np.ones(1, np.float32)
    out, ks, vs = _run(_session("fp16", compute=TensorProto.FLOAT16), b, pool, one, "fp16", key=k, value=v, query=q)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(ks, k)
    ref = R.paged_attention(q.astype(np.float32), ks, vs, pool, b["qsl"], b["ctx"], b["tables"], one, one)
    np.testing.assert_allclose(out.astype(np.float32), ref, atol=2e-3, rtol=2e-3)  # fp16 output rounding


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("kwargs", [{}, {"sliding_window": 5}])
@pytest.mark.parametrize("batch", sorted(BATCHES))
def test_native_dynamic_scales_match_reference(groups, kwargs, batch):
    rng = np.random.default_rng(4)
    b = _mixed_batch(rng, *BATCHES[batch], dtype=np.float32)
    pool = R.quantize_dynamic(b["pool"] * 40, groups)
    one = np.ones(1, np.float32)
    k, v = b["k"] * 40, b["v"] * 40
    out, ks, vs = _run(_session("int8", dynamic=True, **kwargs), b, pool, one, "int8", key=k, value=v)
    rks, rvs = R.kv_append(k, v, b["slots"], pool.copy(), one, one)
    np.testing.assert_array_equal(ks, rks)
    np.testing.assert_array_equal(vs, rvs)
    ref = R.paged_attention(b["q"], rks, rvs, pool, b["qsl"], b["ctx"], b["tables"], one, one, **kwargs)
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-4)


def test_native_dynamic_tables_equal_reference():
    lib = ctypes.CDLL(str(native_ops_library()))
    scales, thresholds = np.zeros(256, np.float32), np.zeros(255, np.float32)
    lib.trtkv_native_dynamic_tables(scales.ctypes.data_as(ctypes.c_void_p), thresholds.ctypes.data_as(ctypes.c_void_p))
    ref_scales, ref_thresholds = R.dynamic_scale_table()
    np.testing.assert_array_equal(scales, ref_scales)
    np.testing.assert_array_equal(thresholds, ref_thresholds)


@pytest.mark.parametrize("kv_dtype", ["fp32", "fp16", "bf16", "int8", "fp8", "dynamic"])
def test_native_encoders_on_edge_values(kv_dtype):
    """NaN, infinities, saturation, ties and subnormals encode exactly as the reference."""
    edges = np.array([0.0, -0.0, 2.0**-9, 2.0**-10, 2.0**-7 * 1.0625, 448.0, -448.0, 449.0, 465.0, 1e6, -1e6,
                      0.3, 17.5, 0.5, 1.5, 2.5, -2.5, 126.6, 127.5, 300.0, np.nan, np.inf, -np.inf, 6.1e-5,
                      1e-40, 3.0e38, 65504.0, 65520.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8],
                     np.float32)
    rng = np.random.default_rng(7)
    ties = np.array([127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 3.5, 4.5] + [0.0] * 24, np.float32)  # dynamic scale 1
    x = np.concatenate([edges, rng.standard_normal(66).astype(np.float32) * 50, ties]).reshape(4, 1, 32)
    dynamic = kv_dtype == "dynamic"
    kv = "int8" if dynamic else kv_dtype
    width = 33 if dynamic else 32
    pool = np.zeros((2, 2, 4, 1, width), R.KV_NUMPY_DTYPES[kv])
    scale = np.array([0.25], np.float32) if kv == "fp8" else np.ones(1, np.float32)  # int8: ties at 1
    b = dict(q=np.zeros((4, 1, 32), np.float32), slots=np.array([0, 1, 2, 3], np.int64),
             qsl=np.array([0, 4], np.int32), ctx=np.zeros(1, np.int32), tables=np.zeros((1, 1), np.int32))
    with np.errstate(invalid="ignore", over="ignore"):
        rks, _ = R.kv_append(x, x, b["slots"], pool.copy(), scale, scale)
    _, ks, _ = _run(_session(kv, dynamic=dynamic), b, pool, scale, kv, key=x, value=x)
    np.testing.assert_array_equal(ks.view(np.uint8), rks.view(np.uint8))


@pytest.mark.parametrize("kv_dtype", ["fp32", "bf16", "fp8", "dynamic"])
def test_native_kv_append_writes_the_pool_in_place(kv_dtype):
    """write_pool = 1: the stored codes land at slot_mapping in the bound pool array (slots < 0
    skipped), exactly where the reference writes them, and nowhere else."""
    rng = np.random.default_rng(8)
    b = _mixed_batch(rng, *BATCHES["mixed"], dtype=np.float32)
    dynamic = kv_dtype == "dynamic"
    kv = "int8" if dynamic else kv_dtype
    scale = SCALES.get(kv, np.ones(1, np.float32)) if not dynamic else np.ones(1, np.float32)
    pool = R.quantize_dynamic(b["pool"], 1) if dynamic else R.quantize(b["pool"], scale, kv)
    b["slots"] = b["slots"].copy()
    b["slots"][3] = -1  # a padded token
    ref_pool = pool.copy()
    R.kv_append(b["k"], b["v"], b["slots"], ref_pool, scale, scale)
    live = pool.copy()
    _run(_session(kv, dynamic=dynamic, write_pool=True), b, live, scale, kv)
    np.testing.assert_array_equal(live.view(np.uint8), ref_pool.view(np.uint8))


@pytest.mark.parametrize(("field", "bad", "message"), [
    ("tables", 10_000, "outside the pool"),
    ("tables", -3, "outside the pool"),
    ("slots", 10_000, "outside the pool"),
    ("qsl", 99, "query_start_loc"),
    ("ctx", 500, "more blocks than block_tables"),
])
def test_native_kernels_refuse_bad_indices(field, bad, message):
    rng = np.random.default_rng(9)
    b = _mixed_batch(rng, *BATCHES["mixed"], dtype=np.float32)
    one = np.ones(1, np.float32)
    b[field] = b[field].copy()
    b[field].flat[-1 if field == "qsl" else 0] = bad
    if field == "tables":  # make sure the bad id is one the sequence reads
        b["ctx"] = b["ctx"].copy()
        b["ctx"][0] = max(int(b["ctx"][0]), 1)
    session = _session("fp32")
    with pytest.raises(Exception, match=message):
        _run(session, b, b["pool"], one, "fp32")
    good = _mixed_batch(np.random.default_rng(9), *BATCHES["mixed"], dtype=np.float32)
    out, ks, vs = _run(session, good, good["pool"], one, "fp32")  # the session still works
    ref = R.paged_attention(good["q"], ks, vs, good["pool"], good["qsl"], good["ctx"], good["tables"], one, one)
    np.testing.assert_allclose(out, ref, atol=2e-6, rtol=1e-5)


def test_native_write_pool_keeps_the_later_token_of_a_repeated_slot():
    """A long step (encoded in parallel) whose slot_mapping names one slot twice: the pool ends
    with the later token's codes, as the reference (and the NumPy scatter) write it."""
    rng = np.random.default_rng(11)
    b = _mixed_batch(rng, [3, 0], [1, 80], dtype=np.float32)
    b["slots"] = b["slots"].copy()
    b["slots"][75] = b["slots"][2]
    one = np.ones(1, np.float32)
    ref_pool = b["pool"].copy()
    R.kv_append(b["k"], b["v"], b["slots"], ref_pool, one, one)
    live = b["pool"].copy()
    _run(_session("fp32", write_pool=True), b, live, one, "fp32")
    np.testing.assert_array_equal(live, ref_pool)


def test_native_refuses_a_wrapping_query_start_loc():
    """Differences of query_start_loc that overflow int32 are refused, not run."""
    rng = np.random.default_rng(12)
    b = _mixed_batch(rng, [2, 3, 1], [2, 2, 1], dtype=np.float32)
    b["qsl"] = np.array([0, 2**31 - 1, -2, 5], np.int32)
    with pytest.raises(Exception, match="query_start_loc"):
        _run(_session("fp32"), b, b["pool"], np.ones(1, np.float32), "fp32")


def test_native_kernels_replace_the_function_bodies(tmp_path):
    """Registered, the native kernels run instead of the local functions: the graph ONNX
    Runtime optimizes keeps the two trtkv nodes, without them it holds the bodies' ops."""
    import onnx

    for native in (False, True):
        saved = tmp_path / f"optimized-{int(native)}.onnx"
        ops_session("fp32", native=native, optimized_model_filepath=str(saved))
        kinds = {n.op_type for n in onnx.load(str(saved)).graph.node}
        if native:
            assert {"PagedAttention", "KVAppend"} <= kinds and "Softmax" not in kinds
        else:
            assert "Softmax" in kinds and "PagedAttention" not in kinds


def test_portable_build_matches_reference(tmp_path):
    """The paths a CPU without AVX-512 / F16C runs (``-march=x86-64``), built and checked in a
    child process on a sample of the cases above."""
    import subprocess
    import sys

    env = dict(os.environ, TRTKV_NATIVE_ARCH="x86-64", TRTKV_NATIVE_CACHE=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
         "match_reference and (long or mixed) and not portable or head_layouts or fp16_compute or edge_values"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    assert list(tmp_path.rglob("libtrtkv_ort_ops.so")), "the portable library was not built"

"""NumPy reference implementations of the trtkv ops: the oracle for every other implementation.

Written for clarity, not speed: loops over sequences, float64 math when given float64 inputs
(float32 accumulation otherwise mirrors what the kernels do). The conventions (layout,
quantization, masking) are those of `trtkv.ops.schema`.

Must not import torch, onnx or tensorrt.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from trtkv.ops.schema import (
    DYNAMIC_EXPONENT_MAX,
    DYNAMIC_EXPONENT_MIN,
    DYNAMIC_SCALE_STEPS,
    FP8_E4M3_MAX,
    INT8_MAX,
    KV_DTYPE_SPECS,
)

#: numpy storage dtype of each KV dtype name (from the `KV_DTYPE_SPECS` registry).
KV_NUMPY_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(getattr(ml_dtypes, d.numpy, None) or d.numpy) for name, d in KV_DTYPE_SPECS.items()
}


def kv_dtype_of(array: np.ndarray) -> str:
    """The KV dtype name of a pool or stored-codes array."""
    for name, dtype in KV_NUMPY_DTYPES.items():
        if array.dtype == dtype:
            return name
    raise ValueError(f"unsupported KV storage dtype {array.dtype}")


def _head_scale(scale: np.ndarray, ndim: int) -> np.ndarray:
    """Broadcast a [1] or [Hkv] scale against [..., Hkv, D]."""
    s = np.asarray(scale, dtype=np.float32).reshape(-1)
    return s.reshape((1,) * (ndim - 2) + (-1, 1))


def quantize(x: np.ndarray, scale: np.ndarray, kv_dtype: str) -> np.ndarray:
    """Encode values as stored in a pool of ``kv_dtype``.

    Args:
        x: float array [..., Hkv, D].
        scale: float32 [1] or [Hkv]; ignored (must be 1) for unquantized dtypes.
        kv_dtype: one of fp32, fp16, bf16, fp8, int8.

    Returns:
        Array of the pool's numpy dtype. fp8: x/scale saturated to +-448 then rounded to the
        nearest E4M3 value (ties to even); NaN stays NaN. int8: round half to even of x/scale,
        clamped to +-127; NaN becomes 0.
    """
    if kv_dtype not in ("fp8", "int8"):
        return x.astype(KV_NUMPY_DTYPES[kv_dtype])
    y = x.astype(np.float32) / _head_scale(scale, x.ndim)
    if kv_dtype == "fp8":
        return np.clip(y, -FP8_E4M3_MAX, FP8_E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
    y = np.nan_to_num(y, nan=0.0, posinf=INT8_MAX, neginf=-INT8_MAX)
    return np.clip(np.rint(y), -INT8_MAX, INT8_MAX).astype(np.int8)


def dequantize(q: np.ndarray, scale: np.ndarray, kv_dtype: str) -> np.ndarray:
    """Decode stored codes to float32 (``q * scale`` for fp8/int8, a cast otherwise)."""
    y = q.astype(np.float32)
    if kv_dtype in ("fp8", "int8"):
        y = y * _head_scale(scale, q.ndim)
    return y


def dynamic_scale_table() -> tuple[np.ndarray, np.ndarray]:
    """(scales, thresholds), float32: ``scales[e + 128] = 2 ** (e / 8)`` for every exponent
    e in [-128, 127], and ``thresholds[i] = 127 * scales[i]`` for all but the last: a row's
    exponent is -128 + the number of thresholds below its amax (the smallest scale that
    holds it, the largest when none does). Tables, not log2, so every implementation picks
    the same exponent."""
    e = np.arange(DYNAMIC_EXPONENT_MIN, DYNAMIC_EXPONENT_MAX + 1, dtype=np.float64)
    scales = np.exp2(e / DYNAMIC_SCALE_STEPS).astype(np.float32)
    return scales, (np.float32(INT8_MAX) * scales[:-1]).astype(np.float32)


def quantize_dynamic(x: np.ndarray, groups: int = 1) -> np.ndarray:
    """Encode [..., D] rows with a scale per group of D / ``groups`` values
    (`trtkv.ops.schema.DYNAMIC_GROUP_SIZE`): int8 [..., D + groups], the codes (round half to
    even of x / scale) then the groups' exponents. NaN becomes 0."""
    scales, thresholds = dynamic_scale_table()
    big = float(np.finfo(np.float32).max)
    x = np.nan_to_num(x.astype(np.float32), nan=0.0, posinf=big, neginf=-big)
    head_dim = x.shape[-1]
    xg = x.reshape(*x.shape[:-1], groups, head_dim // groups)
    amax = np.abs(xg).max(axis=-1, keepdims=True)  # [..., G, 1]
    index = (thresholds < amax[..., None]).sum(axis=-1)  # [..., G, 1]
    codes = np.clip(np.rint(xg / scales[index]), -INT8_MAX, INT8_MAX).reshape(x.shape)
    return np.concatenate([codes, index[..., 0] + DYNAMIC_EXPONENT_MIN], axis=-1).astype(np.int8)


def dequantize_dynamic(q: np.ndarray, groups: int = 1) -> np.ndarray:
    """Decode `quantize_dynamic` rows ([..., D + groups]) to float32 [..., D]."""
    scales, _ = dynamic_scale_table()
    head_dim = q.shape[-1] - groups
    codes = q[..., :head_dim].astype(np.float32).reshape(*q.shape[:-1], groups, head_dim // groups)
    scale = scales[q[..., head_dim:].astype(np.int64) - DYNAMIC_EXPONENT_MIN]  # [..., G]
    return (codes * scale[..., None]).reshape(*q.shape[:-1], head_dim)


def kv_append(
    key: np.ndarray,
    value: np.ndarray,
    slot_mapping: np.ndarray,
    kv_cache: np.ndarray,
    k_scale: np.ndarray,
    v_scale: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Write new K/V into the pool in place.

    Args:
        key, value: [T, Hkv, D] new tokens' K and V.
        slot_mapping: int64 [T]; slot s is block s // B, offset s % B; negative = skip.
        kv_cache: [N, 2, B, Hkv, D] pool, modified in place; [N, 2, B, Hkv, D + G] int8 for
            dynamic scales (`quantize_dynamic` with G groups).
        k_scale, v_scale: float32 [1] or [Hkv] (unused with dynamic scales).

    Returns:
        (key_stored, value_stored): [T, Hkv, D] (or D + G) codes in the pool dtype.
    """
    kv_dtype = kv_dtype_of(kv_cache)
    groups = kv_cache.shape[-1] - key.shape[-1]
    if groups:  # dynamic scales: [N, 2, B, Hkv, D + G]
        key_stored, value_stored = quantize_dynamic(key, groups), quantize_dynamic(value, groups)
    else:
        key_stored = quantize(key, k_scale, kv_dtype)
        value_stored = quantize(value, v_scale, kv_dtype)
    block_size = kv_cache.shape[2]
    for t, slot in enumerate(np.asarray(slot_mapping).tolist()):
        if slot < 0:
            continue
        kv_cache[slot // block_size, 0, slot % block_size] = key_stored[t]
        kv_cache[slot // block_size, 1, slot % block_size] = value_stored[t]
    return key_stored, value_stored


def paged_attention(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    kv_cache: np.ndarray,
    query_start_loc: np.ndarray,
    context_lens: np.ndarray,
    block_tables: np.ndarray,
    k_scale: np.ndarray,
    v_scale: np.ndarray,
    *,
    scale: float = 0.0,
    sliding_window: int = 0,
    softcap: float = 0.0,
) -> np.ndarray:
    """Causal attention of each sequence's new tokens over its pooled history and itself.

    Args:
        query: [T, H, D].
        key, value: [T, Hkv, D] new tokens' K/V as stored (pool dtype).
        kv_cache: [N, 2, B, Hkv, D] pool holding each sequence's history.
        query_start_loc: int [S+1]; sequence s owns new tokens qsl[s]:qsl[s+1].
        context_lens: int [S]; tokens of sequence s already in the pool.
        block_tables: int [S, M]; block ids of each sequence's history.
        k_scale, v_scale: float32 [1] or [Hkv].
        scale: softmax scale, 0 = 1/sqrt(D). sliding_window: 0 = unlimited, else a query at
            position p sees keys at positions > p - W. softcap: 0 = off, else c*tanh(s/c).

    Returns:
        [T, H, D] in the query's dtype (float64 math when query is float64, else float32).
    """
    acc = np.float64 if query.dtype == np.float64 else np.float32
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    group = num_heads // num_kv_heads
    block_size = kv_cache.shape[2]
    kv_dtype = kv_dtype_of(kv_cache) if kv_cache.dtype != np.float64 else "fp32"
    groups = kv_cache.shape[-1] - head_dim
    if groups:
        kv_dtype = "dynamic"
    sm_scale = scale if scale > 0 else 1.0 / np.sqrt(head_dim)
    out = np.zeros((num_tokens, num_heads, head_dim), dtype=acc)
    for s in range(len(context_lens)):
        lo, hi = int(query_start_loc[s]), int(query_start_loc[s + 1])
        ctx = int(context_lens[s])
        slots = [int(block_tables[s, p // block_size]) * block_size + p % block_size for p in range(ctx)]
        k_hist = np.stack([kv_cache[x // block_size, 0, x % block_size] for x in slots]) if ctx else key[:0]
        v_hist = np.stack([kv_cache[x // block_size, 1, x % block_size] for x in slots]) if ctx else value[:0]
        k_all = np.concatenate([_decode(k_hist, k_scale, kv_dtype, groups),
                                _decode(key[lo:hi], k_scale, kv_dtype, groups)])
        v_all = np.concatenate([_decode(v_hist, v_scale, kv_dtype, groups),
                                _decode(value[lo:hi], v_scale, kv_dtype, groups)])
        k_all, v_all = k_all.astype(acc), v_all.astype(acc)
        q = query[lo:hi].astype(acc)
        q_pos = ctx + np.arange(hi - lo)
        k_pos = np.arange(ctx + hi - lo)
        mask = k_pos[None, :] <= q_pos[:, None]
        if sliding_window > 0:
            mask &= k_pos[None, :] > q_pos[:, None] - sliding_window
        for h in range(num_heads):
            kh = h // group
            scores = (q[:, h] @ k_all[:, kh].T) * sm_scale
            if softcap > 0:
                scores = softcap * np.tanh(scores / softcap)
            scores = np.where(mask, scores, -np.inf)
            scores = scores - scores.max(axis=1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=1, keepdims=True)
            out[lo:hi, h] = probs @ v_all[:, kh]
    return out.astype(query.dtype) if query.dtype != np.float64 else out


def _decode(x: np.ndarray, scale: np.ndarray, kv_dtype: str, groups: int = 0) -> np.ndarray:
    if x.dtype == np.float64:
        return x
    if kv_dtype == "dynamic":
        return dequantize_dynamic(x, groups)
    return dequantize(x, scale, kv_dtype)


def dense_causal_attention(
    query: np.ndarray, key: np.ndarray, value: np.ndarray, *, scale: float = 0.0
) -> np.ndarray:
    """Plain causal attention of one sequence, [L, H, D] x [L, Hkv, D] -> [L, H, D] (float64)."""
    num_heads, head_dim = query.shape[1], query.shape[2]
    group = num_heads // key.shape[1]
    sm_scale = scale if scale > 0 else 1.0 / np.sqrt(head_dim)
    length = query.shape[0]
    mask = np.tril(np.ones((length, length), dtype=bool))
    out = np.zeros(query.shape, dtype=np.float64)
    for h in range(num_heads):
        s = query[:, h].astype(np.float64) @ key[:, h // group].astype(np.float64).T * sm_scale
        s = np.where(mask, s, -np.inf)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, h] = (p / p.sum(axis=1, keepdims=True)) @ value[:, h // group].astype(np.float64)
    return out

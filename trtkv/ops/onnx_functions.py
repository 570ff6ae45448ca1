"""The ONNX side of the trtkv ops: node emission and the function bodies ONNX Runtime runs.

Each model carries local functions `trtkv::KVAppend` and `trtkv::PagedAttention` written with
standard ONNX ops, specialised to the model's KV dtype. Nodes also carry `plugin_namespace` /
`plugin_version`, so TensorRT's parser maps them to the plugins instead of inlining these bodies.

Cost model of the bodies (what makes the ONNX Runtime path O(new tokens) in the pool size):
the pool is only ever *gathered* (rows of the sequences' histories, through a zero-copy
Reshape of the input), never copied or scattered; KVAppend returns the stored codes and the
runtime writes them into the pool at slot_mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper

from trtkv.ops.builder import OPSET, GraphBuilder
from trtkv.ops.schema import (
    FP8_E4M3_MAX,
    INT8_MAX,
    KV_APPEND,
    OP_DOMAIN,
    OP_SET_VERSION,
    PAGED_ATTENTION,
    PLUGIN_NODE_ATTRIBUTES,
)

#: ONNX element type of each KV dtype name.
KV_ONNX_TYPES: dict[str, int] = {
    "fp32": TensorProto.FLOAT,
    "fp16": TensorProto.FLOAT16,
    "bf16": TensorProto.BFLOAT16,
    "fp8": TensorProto.FLOAT8E4M3FN,
    "int8": TensorProto.INT8,
}

_MASKED = -1.0e30


def _function(
    name: str, b: GraphBuilder, inputs: tuple[str, ...], outputs: list[str], attrs: Mapping[str, object]
) -> onnx.FunctionProto:
    attribute_protos = [helper.make_attribute(k, v) for k, v in attrs.items()]
    for k, v in PLUGIN_NODE_ATTRIBUTES.items():
        attribute_protos.append(helper.make_attribute(k, v))
    return helper.make_function(
        OP_DOMAIN, name, list(inputs), outputs, b.nodes,
        [helper.make_opsetid("", OPSET)], attribute_protos=attribute_protos,
    )


def _scale_rows(b: GraphBuilder, scale: str) -> str:
    """[1] or [Hkv] -> [Hkv or 1, 1] so it broadcasts over [..., Hkv, D]."""
    return b.op("Unsqueeze", scale, b.ints(1))


def _quantize(b: GraphBuilder, x: str, scale: str, kv_dtype: str) -> str:
    to = KV_ONNX_TYPES[kv_dtype]
    if kv_dtype not in ("fp8", "int8"):
        return b.op("Cast", x, to=to)
    y = b.op("Div", b.op("Cast", x, to=TensorProto.FLOAT), _scale_rows(b, scale))
    if kv_dtype == "fp8":
        lim = b.scalar(FP8_E4M3_MAX, np.float32)
        return b.op("Cast", b.op("Clip", y, b.op("Neg", lim), lim), to=to, saturate=1)
    lim = b.scalar(INT8_MAX, np.float32)
    # NaN -> 0 (documented in trtkv.ops.reference.quantize); Round is half-to-even.
    y = b.op("Where", b.op("IsNaN", y), b.scalar(0.0, np.float32), y)
    return b.op("Cast", b.op("Clip", b.op("Round", y), b.op("Neg", lim), lim), to=to)


def _dequantize(b: GraphBuilder, x: str, scale: str, kv_dtype: str) -> str:
    y = b.op("Cast", x, to=TensorProto.FLOAT)
    if kv_dtype in ("fp8", "int8"):
        y = b.op("Mul", y, _scale_rows(b, scale))
    return y


def _fp8_codes_to_float(b: GraphBuilder, codes: str) -> str:
    """uint8 E4M3 bit patterns -> float32 through a 256-entry table (exact, NaN for 0x7f/0xff)."""
    table = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return b.op("Gather", b.const(table), b.op("Cast", codes, to=TensorProto.INT64), axis=0)


def _dequantize_pool_rows(b: GraphBuilder, rows: str, scale: str, kv_dtype: str, fp8_as_uint8: bool) -> str:
    if kv_dtype == "fp8" and fp8_as_uint8:
        return b.op("Mul", _fp8_codes_to_float(b, rows), _scale_rows(b, scale))
    return _dequantize(b, rows, scale, kv_dtype)


def kv_append_function(kv_dtype: str) -> onnx.FunctionProto:
    """Body of `trtkv::KVAppend` for a pool of ``kv_dtype``: the stored codes of key/value."""
    b = GraphBuilder("kva_", constants_as_nodes=True)
    key, value, _slots, _pool, k_scale, v_scale = KV_APPEND.input_names
    b.op("Identity", _quantize(b, key, k_scale, kv_dtype), outputs=["key_stored"])
    b.op("Identity", _quantize(b, value, v_scale, kv_dtype), outputs=["value_stored"])
    return _function(KV_APPEND.name, b, KV_APPEND.input_names, list(KV_APPEND.output_names), {})


def paged_attention_function(kv_dtype: str, *, fp8_pool_as_uint8: bool = False) -> onnx.FunctionProto:
    """Body of `trtkv::PagedAttention` for a pool of ``kv_dtype`` (float32 accumulation).

    ``fp8_pool_as_uint8``: the pool input holds fp8 codes typed as uint8 (ONNX Runtime's CPU
    Gather has no float8 kernel); they are decoded through a lookup table.

    Sequences are padded to the step's longest new-token run (Q) and longest history (C):
    queries [S, Q], keys [S, C + Q]; the result is gathered back to the packed [T, H, D].
    Requires query_start_loc[S] == T (the runtime never pads tokens).
    """
    b = GraphBuilder("pa_", constants_as_nodes=True)
    (query, key, value, pool, qsl, ctx_lens, tables, k_scale, v_scale) = PAGED_ATTENTION.input_names
    i64 = TensorProto.INT64
    zero, one = b.ints(0), b.ints(1)

    def dim(tensor: str, axis: int) -> str:
        return b.op("Gather", b.op("Shape", tensor), b.ints(axis), axis=0)  # shape [1]

    def unsq(x: str, axis: int) -> str:
        return b.op("Unsqueeze", x, b.ints(axis))

    def scalar_max(x: str) -> str:
        return b.op("ReduceMax", x, keepdims=0)

    num_tokens, num_heads, head_dim = dim(query, 0), dim(query, 1), dim(query, 2)
    num_kv_heads, block_size = dim(pool, 3), dim(pool, 2)
    num_seqs = dim(ctx_lens, 0)
    qsl64, ctx64 = b.op("Cast", qsl, to=i64), b.op("Cast", ctx_lens, to=i64)
    starts = b.op("Slice", qsl64, zero, b.ints(-1))
    ends = b.op("Slice", qsl64, one, b.ints(2**62))
    new_lens = b.op("Sub", ends, starts)
    max_new = scalar_max(new_lens)
    # ReduceMax of a [S] history length vector; Max with 0 keeps C >= 0.
    max_ctx = scalar_max(b.op("Concat", ctx64, zero, axis=0))
    q_idx = b.op("Range", b.scalar(0, np.int64), max_new, b.scalar(1, np.int64))  # [Q]
    c_idx = b.op("Range", b.scalar(0, np.int64), max_ctx, b.scalar(1, np.int64))  # [C]

    # New tokens: row of packed token (s, i) and its validity.
    q_valid = b.op("Less", unsq(q_idx, 0), unsq(new_lens, 1))  # [S, Q]
    q_rows = b.op("Where", q_valid, b.op("Add", unsq(starts, 1), unsq(q_idx, 0)), zero)
    q_pad = b.op("Gather", b.op("Cast", query, to=TensorProto.FLOAT), q_rows, axis=0)  # [S,Q,H,D]
    # Decode the step's T stored K/V first, then pad (Gather has no float8 kernel on CPU).
    k_new = b.op("Gather", _dequantize(b, key, k_scale, kv_dtype), q_rows, axis=0)
    v_new = b.op("Gather", _dequantize(b, value, v_scale, kv_dtype), q_rows, axis=0)

    # History: pool rows of position j of sequence s, through the block table.
    num_ctx = b.op("Concat", num_seqs, b.op("Reshape", max_ctx, one), axis=0)  # [2] = (S, C)
    blk_col = b.op("Expand", unsq(b.op("Div", c_idx, block_size), 0), num_ctx)  # [S, C]
    blocks = b.op("GatherElements", b.op("Cast", tables, to=i64), blk_col, axis=1)
    c_valid = b.op("Less", unsq(c_idx, 0), unsq(ctx64, 1))  # [S, C]
    two_b = b.op("Mul", block_size, b.ints(2))
    k_rows = b.op("Add", b.op("Mul", blocks, two_b), unsq(b.op("Mod", c_idx, block_size), 0))
    k_rows = b.op("Where", c_valid, k_rows, zero)
    v_rows = b.op("Add", k_rows, block_size)
    rows_shape = b.op("Concat", b.ints(-1), num_kv_heads, head_dim, axis=0)
    pool_rows = b.op("Reshape", pool, rows_shape)  # [N*2*B, Hkv, D], aliases the pool
    k_ctx = _dequantize_pool_rows(b, b.op("Gather", pool_rows, k_rows, axis=0), k_scale, kv_dtype, fp8_pool_as_uint8)
    v_ctx = _dequantize_pool_rows(b, b.op("Gather", pool_rows, v_rows, axis=0), v_scale, kv_dtype, fp8_pool_as_uint8)
    k_all = b.op("Concat", k_ctx, k_new, axis=1)  # [S, L=C+Q, Hkv, D]
    v_all = b.op("Concat", v_ctx, v_new, axis=1)

    # Scores [S, Hkv, G, Q, L] with G = H / Hkv query heads per KV head.
    group = b.op("Div", num_heads, num_kv_heads)
    q5 = b.op(
        "Reshape", q_pad,
        b.op("Concat", num_seqs, b.op("Reshape", max_new, one), num_kv_heads, group, head_dim, axis=0),
    )
    q5 = b.op("Transpose", q5, perm=[0, 2, 3, 1, 4])
    k5 = unsq(b.op("Transpose", k_all, perm=[0, 2, 3, 1]), 2)  # [S, Hkv, 1, D, L]
    v5 = unsq(b.op("Transpose", v_all, perm=[0, 2, 1, 3]), 2)  # [S, Hkv, 1, L, D]
    attr_scale = b.attr_const("scale", "float")
    default_scale = b.op("Div", b.scalar(1.0, np.float32), b.op("Sqrt", b.op("Cast", head_dim, to=TensorProto.FLOAT)))
    sm_scale = b.op("Where", b.op("Greater", attr_scale, b.scalar(0.0, np.float32)), attr_scale, default_scale)
    scores = b.op("Mul", b.op("MatMul", q5, k5), sm_scale)
    cap = b.attr_const("softcap", "float")
    capped = b.op("Mul", b.op("Tanh", b.op("Div", scores, cap)), cap)
    scores = b.op("Where", b.op("Greater", cap, b.scalar(0.0, np.float32)), capped, scores)

    # Mask [S, L] per query [S, Q, L]: keys' positions vs the query's position.
    new_pos = b.op("Add", unsq(ctx64, 1), unsq(q_idx, 0))  # [S, Q] positions of new tokens
    k_pos = b.op("Concat", b.op("Expand", unsq(c_idx, 0), num_ctx), new_pos, axis=1)  # [S, L]
    k_valid = b.op("Concat", c_valid, q_valid, axis=1)  # [S, L]
    causal = b.op("LessOrEqual", unsq(k_pos, 1), unsq(new_pos, 2))  # [S, Q, L]
    mask = b.op("And", causal, unsq(k_valid, 1))
    window = b.op("Cast", b.attr_const("sliding_window", "int"), to=i64)
    in_window = b.op("Greater", unsq(k_pos, 1), b.op("Sub", unsq(new_pos, 2), window))
    no_window = b.op("LessOrEqual", window, b.scalar(0, np.int64))
    mask = b.op("And", mask, b.op("Or", in_window, no_window))
    mask5 = unsq(unsq(mask, 1), 1)  # [S, 1, 1, Q, L]
    scores = b.op("Where", mask5, scores, b.scalar(_MASKED, np.float32))
    probs = b.op("Softmax", scores, axis=-1)
    out5 = b.op("Transpose", b.op("MatMul", probs, v5), perm=[0, 3, 1, 2, 4])  # [S,Q,Hkv,G,D]
    flat = b.op("Reshape", out5, b.op("Concat", b.ints(-1), num_heads, head_dim, axis=0))

    # Packed token t of sequence s = #(ends <= t) sits at padded row s * Q + (t - starts[s]).
    tok = b.op("Range", b.scalar(0, np.int64), b.op("Squeeze", num_tokens), b.scalar(1, np.int64))
    seq_of = b.op("ReduceSum", b.op("Cast", b.op("GreaterOrEqual", unsq(tok, 1), unsq(ends, 0)), to=i64), one, keepdims=0)
    row = b.op("Add", b.op("Mul", seq_of, max_new), b.op("Sub", tok, b.op("Gather", starts, seq_of, axis=0)))
    b.op("CastLike", b.op("Gather", flat, row, axis=0), query, outputs=["output"])
    attrs = {a.name: a.default for a in PAGED_ATTENTION.attributes}
    return _function(PAGED_ATTENTION.name, b, PAGED_ATTENTION.input_names, ["output"], attrs)


def op_functions(kv_dtype: str, *, fp8_pool_as_uint8: bool = False) -> list[onnx.FunctionProto]:
    """The local functions a model with a ``kv_dtype`` pool carries."""
    return [kv_append_function(kv_dtype),
            paged_attention_function(kv_dtype, fp8_pool_as_uint8=fp8_pool_as_uint8)]


def op_opset_imports() -> list[onnx.OperatorSetIdProto]:
    return [helper.make_opsetid("", OPSET), helper.make_opsetid(OP_DOMAIN, OP_SET_VERSION)]


def emit_kv_append(
    b: GraphBuilder, key: str, value: str, slot_mapping: str, kv_cache: str,
    k_scale: str, v_scale: str, prefix: str,
) -> tuple[str, str]:
    """Emit a `trtkv::KVAppend` node; returns (key_stored, value_stored) names."""
    outs = [f"key_stored{prefix}", f"value_stored{prefix}"]
    attrs: dict[str, Any] = dict(PLUGIN_NODE_ATTRIBUTES)
    b.op(
        KV_APPEND.name, key, value, slot_mapping, kv_cache, k_scale, v_scale,
        outputs=outs, domain=OP_DOMAIN, name=f"KVAppend{prefix}", **attrs,
    )
    return outs[0], outs[1]


def emit_paged_attention(
    b: GraphBuilder, query: str, key_stored: str, value_stored: str, kv_cache: str,
    query_start_loc: str, context_lens: str, block_tables: str, k_scale: str, v_scale: str,
    *, scale: float, sliding_window: int, softcap: float, prefix: str,
) -> str:
    """Emit a `trtkv::PagedAttention` node; returns its output name."""
    attrs: dict[str, Any] = dict(
        PLUGIN_NODE_ATTRIBUTES, scale=float(scale), sliding_window=int(sliding_window),
        softcap=float(softcap),
    )
    out: str = b.op(
        PAGED_ATTENTION.name, query, key_stored, value_stored, kv_cache, query_start_loc,
        context_lens, block_tables, k_scale, v_scale,
        domain=OP_DOMAIN, name=f"PagedAttention{prefix}", **attrs,
    )
    return out


__all__ = [
    "KV_ONNX_TYPES", "emit_kv_append", "emit_paged_attention",
    "kv_append_function", "op_functions", "op_opset_imports", "paged_attention_function",
]

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
from trtkv.ops.reference import dynamic_scale_table
from trtkv.ops.schema import (
    DYNAMIC_EXPONENT_MIN,
    FP8_E4M3_MAX,
    INT8_MAX,
    KV_APPEND,
    KV_DTYPE_SPECS,
    OP_DOMAIN,
    OP_SET_VERSION,
    PAGED_ATTENTION,
    PLUGIN_NODE_ATTRIBUTES,
)

#: ONNX element type of each KV dtype name (from the `KV_DTYPE_SPECS` registry).
KV_ONNX_TYPES: dict[str, int] = {name: d.onnx for name, d in KV_DTYPE_SPECS.items()}

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


def _scale_rows(b: GraphBuilder, scale: str, trailing: int = 1) -> str:
    """[1] or [Hkv] -> [Hkv or 1, 1...] broadcasting over [..., Hkv, D] (``trailing`` = 1)
    or [..., Hkv, C, D] (``trailing`` = 2)."""
    return b.op("Unsqueeze", scale, b.ints(*range(1, trailing + 1)))


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


def _dequantize(b: GraphBuilder, x: str, scale: str, kv_dtype: str, trailing: int = 1) -> str:
    if kv_dtype == "fp32":
        return x  # already float32: no copy
    y = b.op("Cast", x, to=TensorProto.FLOAT)
    if kv_dtype in ("fp8", "int8"):
        y = b.op("Mul", y, _scale_rows(b, scale, trailing))
    return y


def _fp8_codes_to_float(b: GraphBuilder, codes: str) -> str:
    """uint8 E4M3 bit patterns -> float32 through a 256-entry table (exact, NaN for 0x7f/0xff)."""
    table = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    return b.op("Gather", b.const(table), b.op("Cast", codes, to=TensorProto.INT64), axis=0)


def _dequantize_pool_rows(b: GraphBuilder, rows: str, scale: str, kv_dtype: str, fp8_as_uint8: bool) -> str:
    """Decode gathered pool rows laid out [S, Hkv, C, D]."""
    if kv_dtype == "fp8" and fp8_as_uint8:
        return b.op("Mul", _fp8_codes_to_float(b, rows), _scale_rows(b, scale, 2))
    return _dequantize(b, rows, scale, kv_dtype, trailing=2)


def _grouped_shape(b: GraphBuilder, x: str, groups: str, head_dim: str) -> str:
    """Shape of ``x`` [..., D] as [..., G, D / G]."""
    lead = b.op("Slice", b.op("Shape", x), b.ints(0), b.ints(-1))
    return b.op("Concat", lead, groups, b.op("Div", head_dim, groups), axis=0)


def _quantize_dynamic(b: GraphBuilder, x: str, groups: str, head_dim: str) -> str:
    """[..., D] -> int8 [..., D + G]: codes, then each group's scale exponent (as
    `trtkv.ops.reference.quantize_dynamic`, through the same tables)."""
    scales, thresholds = dynamic_scale_table()
    f32 = TensorProto.FLOAT
    xf = b.op("Cast", x, to=f32)
    xf = b.op("Where", b.op("IsNaN", xf), b.scalar(0.0, np.float32), xf)
    big = b.scalar(float(np.finfo(np.float32).max), np.float32)
    xf = b.op("Clip", xf, b.op("Neg", big), big)
    xg = b.op("Reshape", xf, _grouped_shape(b, xf, groups, head_dim))  # [..., G, g]
    amax = b.op("ReduceMax", b.op("Abs", xg), b.ints(-1), keepdims=1)  # [..., G, 1]
    below = b.op("Less", b.const(thresholds), b.op("Unsqueeze", amax, b.ints(-1)))  # [..., G, 1, 255]
    index = b.op("ReduceSum", b.op("Cast", below, to=TensorProto.INT64), b.ints(-1), keepdims=0)  # [..., G, 1]
    scale = b.op("Gather", b.const(scales), index, axis=0)
    lim = b.scalar(INT8_MAX, np.float32)
    codes = b.op("Clip", b.op("Round", b.op("Div", xg, scale)), b.op("Neg", lim), lim)
    codes = b.op("Reshape", codes, b.op("Shape", xf))  # [..., D]
    exponent = b.op("Squeeze", b.op("Add", index, b.scalar(DYNAMIC_EXPONENT_MIN, np.int64)), b.ints(-1))
    return b.op("Cast", b.op("Concat", codes, b.op("Cast", exponent, to=f32), axis=-1), to=TensorProto.INT8)


def _dequantize_dynamic(b: GraphBuilder, q: str, groups: str, head_dim: str) -> str:
    """int8 [..., D + G] rows -> float32 [..., D]."""
    scales, _ = dynamic_scale_table()
    codes = b.op("Cast", b.op("Slice", q, b.ints(0), head_dim, b.ints(-1)), to=TensorProto.FLOAT)
    exponent = b.op("Slice", q, head_dim, b.ints(2**62), b.ints(-1))  # [..., G]
    index = b.op("Sub", b.op("Cast", exponent, to=TensorProto.INT64), b.scalar(DYNAMIC_EXPONENT_MIN, np.int64))
    scale = b.op("Unsqueeze", b.op("Gather", b.const(scales), index, axis=0), b.ints(-1))  # [..., G, 1]
    grouped = b.op("Mul", b.op("Reshape", codes, _grouped_shape(b, codes, groups, head_dim)), scale)
    return b.op("Reshape", grouped, b.op("Shape", codes))


def _dims(b: GraphBuilder, x: str, pool: str) -> tuple[str, str]:
    """(D, G) of a dynamic-scale pool: D from ``x`` [..., D], G = the pool's width - D."""
    head_dim = b.op("Gather", b.op("Shape", x), b.ints(-1), axis=0)
    width = b.op("Gather", b.op("Shape", pool), b.ints(-1), axis=0)
    return head_dim, b.op("Sub", width, head_dim)


def kv_append_function(kv_dtype: str, *, dynamic: bool = False) -> onnx.FunctionProto:
    """Body of `trtkv::KVAppend` for a pool of ``kv_dtype``: the stored codes of key/value
    (``dynamic``: int8 rows with their groups' scale exponents, head_dim + G wide, G from the
    pool's width)."""
    b = GraphBuilder("kva_", constants_as_nodes=True)
    key, value, _slots, pool, k_scale, v_scale = KV_APPEND.input_names
    if dynamic:
        head_dim, groups = _dims(b, key, pool)
        b.op("Identity", _quantize_dynamic(b, key, groups, head_dim), outputs=["key_stored"])
        b.op("Identity", _quantize_dynamic(b, value, groups, head_dim), outputs=["value_stored"])
    else:
        b.op("Identity", _quantize(b, key, k_scale, kv_dtype), outputs=["key_stored"])
        b.op("Identity", _quantize(b, value, v_scale, kv_dtype), outputs=["value_stored"])
    return _function(KV_APPEND.name, b, KV_APPEND.input_names, list(KV_APPEND.output_names), {})


def paged_attention_function(kv_dtype: str, *, fp8_pool_as_uint8: bool = False,
                             dynamic: bool = False) -> onnx.FunctionProto:
    """Body of `trtkv::PagedAttention` for a pool of ``kv_dtype`` (float32 accumulation).

    ``fp8_pool_as_uint8``: the pool input holds fp8 codes typed as uint8 (ONNX Runtime's CPU
    Gather has no float8 kernel); they are decoded through a lookup table. ``dynamic``: the
    pool and the stored K/V are int8 rows of head_dim + G (codes, then the G scale exponents).

    Standard ops need rectangular tensors, so sequences are padded: queries to the longest
    new-token run Q, keys to the longest history C (+ Q). To keep one long prefill chunk from
    padding every decode sequence to Q, decode sequences (one new token) and prefill
    sequences are attended in two groups, and the results gathered back to the packed
    [T, H, D]. Requires query_start_loc[S] == T (the runtime never pads tokens).
    """
    body = _PagedAttentionBody(kv_dtype, fp8_pool_as_uint8, dynamic)
    return body.build()


class _PagedAttentionBody:
    """Emits the PagedAttention function body; one method per stage."""

    def __init__(self, kv_dtype: str, fp8_pool_as_uint8: bool, dynamic: bool = False) -> None:
        self.kv_dtype, self.fp8_as_uint8, self.dynamic = kv_dtype, fp8_pool_as_uint8, dynamic
        self.b = b = GraphBuilder("pa_", constants_as_nodes=True)
        (query, key, value, pool, qsl, ctx_lens, tables, self.k_scale, self.v_scale) = PAGED_ATTENTION.input_names
        i64 = TensorProto.INT64
        self.zero, self.one = b.ints(0), b.ints(1)
        self.num_tokens, self.num_heads, self.head_dim = self.dim(query, 0), self.dim(query, 1), self.dim(query, 2)
        self.num_kv_heads, self.block_size = self.dim(pool, 3), self.dim(pool, 2)
        qsl64 = b.op("Cast", qsl, to=i64)
        self.ctx64 = b.op("Cast", ctx_lens, to=i64)
        self.tables = b.op("Cast", tables, to=i64)
        self.starts = b.op("Slice", qsl64, self.zero, b.ints(-1))
        self.ends = b.op("Slice", qsl64, self.one, b.ints(2**62))
        self.new_lens = b.op("Sub", self.ends, self.starts)
        self.query = b.op("Cast", query, to=TensorProto.FLOAT)
        # Decode the step's T stored K/V once (Gather has no float8 kernel on CPU), and view
        # them and the pool as rows of D: (token row, head) -> row * Hkv + head.
        rows_shape = b.op("Concat", b.ints(-1), self.head_dim, axis=0)
        if dynamic:
            self.groups = b.op("Sub", self.dim(pool, 4), self.head_dim)
            key_f = _dequantize_dynamic(b, key, self.groups, self.head_dim)
            value_f = _dequantize_dynamic(b, value, self.groups, self.head_dim)
        else:
            key_f, value_f = _dequantize(b, key, self.k_scale, kv_dtype), _dequantize(b, value, self.v_scale, kv_dtype)
        self.key_rows = b.op("Reshape", key_f, rows_shape)
        self.value_rows = b.op("Reshape", value_f, rows_shape)
        pool_rows_shape = b.op("Concat", b.ints(-1), self.dim(pool, 4), axis=0)
        self.pool_rows = b.op("Reshape", pool, pool_rows_shape)  # [N*2*B*Hkv, D (+1)], aliases the pool
        attr_scale = b.attr_const("scale", "float")
        default = b.op("Div", b.scalar(1.0, np.float32), b.op("Sqrt", b.op("Cast", self.head_dim, to=TensorProto.FLOAT)))
        self.sm_scale = b.op("Where", b.op("Greater", attr_scale, b.scalar(0.0, np.float32)), attr_scale, default)
        self.cap = b.attr_const("softcap", "float")
        self.window = b.op("Cast", b.attr_const("sliding_window", "int"), to=i64)

    def dim(self, tensor: str, axis: int) -> str:
        return self.b.op("Gather", self.b.op("Shape", tensor), self.b.ints(axis), axis=0)  # [1]

    def unsq(self, x: str, axis: int) -> str:
        return self.b.op("Unsqueeze", x, self.b.ints(axis))

    def max0(self, x: str) -> str:
        """max(x) as a scalar, 0 for an empty x."""
        return self.b.op("ReduceMax", self.b.op("Concat", x, self.zero, axis=0), keepdims=0)

    def build(self) -> onnx.FunctionProto:
        b, unsq = self.b, self.unsq
        i64 = TensorProto.INT64
        is_dec = b.op("Equal", self.new_lens, self.one)  # [S]
        is_pre = b.op("Not", is_dec)
        dec_out, dec_q = self.attend(b.op("Squeeze", b.op("NonZero", is_dec), self.zero), decode=True)
        pre_out, pre_q = self.attend(b.op("Squeeze", b.op("NonZero", is_pre), self.zero), decode=False)
        # Token t of sequence s = #(ends <= t): row of its output in Concat(dec_out, pre_out).
        tok = b.op("Range", b.scalar(0, np.int64), b.op("Squeeze", self.num_tokens), b.scalar(1, np.int64))
        seq_of = b.op("ReduceSum", b.op("Cast", b.op("GreaterOrEqual", unsq(tok, 1), unsq(self.ends, 0)), to=i64),
                      self.one, keepdims=0)
        offset = b.op("Sub", tok, b.op("Gather", self.starts, seq_of, axis=0))

        def position(mask: str) -> str:  # index of each sequence within its group
            return b.op("Sub", b.op("CumSum", b.op("Cast", mask, to=i64), self.zero), self.one)

        dec_row = b.op("Add", b.op("Mul", b.op("Gather", position(is_dec), seq_of, axis=0), dec_q), offset)
        pre_row = b.op("Add", b.op("Mul", b.op("Gather", position(is_pre), seq_of, axis=0), pre_q), offset)
        pre_row = b.op("Add", pre_row, b.op("Squeeze", self.dim(dec_out, 0), self.zero))
        row = b.op("Where", b.op("Gather", is_dec, seq_of, axis=0), dec_row, pre_row)
        out = b.op("Gather", b.op("Concat", dec_out, pre_out, axis=0), row, axis=0)
        b.op("CastLike", out, "query", outputs=["output"])
        attrs = {a.name: a.default for a in PAGED_ATTENTION.attributes}
        return _function(PAGED_ATTENTION.name, b, PAGED_ATTENTION.input_names, ["output"], attrs)

    def attend(self, seq_ids: str, decode: bool) -> tuple[str, str]:
        """Padded attention of the sequences ``seq_ids`` [S'].

        K/V are gathered straight into [S', Hkv, L, D] (L = C + Q keys), indexing the pool
        viewed as [N*2*B*Hkv, D] rows, so they need no transpose. Decode groups (Q = 1)
        compute transposed scores [S', Hkv, L, G] = K @ q^T and so never transpose K;
        prefill groups use the usual q @ K^T.

        Returns:
            (out [S' * Q', H, D] float32, Q' scalar): row s * Q' + i holds new token i of the
            group's sequence s.
        """
        b, unsq = self.b, self.unsq
        starts = b.op("Gather", self.starts, seq_ids, axis=0)
        new_lens = b.op("Gather", self.new_lens, seq_ids, axis=0)
        ctx = b.op("Gather", self.ctx64, seq_ids, axis=0)
        tables = b.op("Gather", self.tables, seq_ids, axis=0)
        num_seqs = self.dim(seq_ids, 0)
        max_new = b.scalar(1, np.int64) if decode else self.max0(new_lens)
        max_ctx = self.max0(ctx)
        q_idx = b.op("Range", b.scalar(0, np.int64), max_new, b.scalar(1, np.int64))  # [Q]
        c_idx = b.op("Range", b.scalar(0, np.int64), max_ctx, b.scalar(1, np.int64))  # [C]
        heads = b.op("Range", b.scalar(0, np.int64), b.op("Squeeze", self.num_kv_heads, self.zero),
                     b.scalar(1, np.int64))
        heads3 = unsq(unsq(heads, 0), 2)  # [1, Hkv, 1]

        def head_rows(rows: str) -> str:  # [S', X] token rows -> [S', Hkv, X] (row, head) rows
            return b.op("Add", b.op("Mul", unsq(rows, 1), self.num_kv_heads), heads3)

        # New tokens: packed row of (s, i) and its validity.
        q_valid = b.op("Less", unsq(q_idx, 0), unsq(new_lens, 1))  # [S', Q]
        q_rows = b.op("Where", q_valid, b.op("Add", unsq(starts, 1), unsq(q_idx, 0)), self.zero)
        # Softmax scale folded into the queries: fewer multiplies than scaling the scores.
        q_pad = b.op("Mul", b.op("Gather", self.query, q_rows, axis=0), self.sm_scale)  # [S', Q, H, D]
        k_new = b.op("Gather", self.key_rows, head_rows(q_rows), axis=0)  # [S', Hkv, Q, D]
        v_new = b.op("Gather", self.value_rows, head_rows(q_rows), axis=0)

        # History: pool rows of position j of sequence s, through the block table.
        shape_sc = b.op("Concat", num_seqs, b.op("Reshape", max_ctx, self.one), axis=0)  # (S', C)
        blk_col = b.op("Expand", unsq(b.op("Div", c_idx, self.block_size), 0), shape_sc)
        blocks = b.op("GatherElements", tables, blk_col, axis=1)  # [S', C]
        c_valid = b.op("Less", unsq(c_idx, 0), unsq(ctx, 1))
        two_b = b.op("Mul", self.block_size, b.ints(2))
        k_rows = b.op("Add", b.op("Mul", blocks, two_b), unsq(b.op("Mod", c_idx, self.block_size), 0))
        k_rows = b.op("Where", c_valid, k_rows, self.zero)
        v_rows = b.op("Add", k_rows, self.block_size)
        k_gathered = b.op("Gather", self.pool_rows, head_rows(k_rows), axis=0)
        v_gathered = b.op("Gather", self.pool_rows, head_rows(v_rows), axis=0)
        if self.dynamic:
            k_ctx = _dequantize_dynamic(b, k_gathered, self.groups, self.head_dim)
            v_ctx = _dequantize_dynamic(b, v_gathered, self.groups, self.head_dim)
        else:
            k_ctx = _dequantize_pool_rows(b, k_gathered, self.k_scale, self.kv_dtype, self.fp8_as_uint8)
            v_ctx = _dequantize_pool_rows(b, v_gathered, self.v_scale, self.kv_dtype, self.fp8_as_uint8)

        # Additive mask [S', Q, L]: 0 where query (s, i) may see key l, -1e30 elsewhere.
        new_pos = b.op("Add", unsq(ctx, 1), unsq(q_idx, 0))  # [S', Q]
        k_pos = b.op("Concat", b.op("Expand", unsq(c_idx, 0), shape_sc), new_pos, axis=1)  # [S', L]
        k_valid = b.op("Concat", c_valid, q_valid, axis=1)
        mask = b.op("And", b.op("LessOrEqual", unsq(k_pos, 1), unsq(new_pos, 2)), unsq(k_valid, 1))
        in_window = b.op("Greater", unsq(k_pos, 1), b.op("Sub", unsq(new_pos, 2), self.window))
        no_window = b.op("LessOrEqual", self.window, b.scalar(0, np.int64))
        mask = b.op("And", mask, b.op("Or", in_window, no_window))
        bias = b.op("Where", mask, b.scalar(0.0, np.float32), b.scalar(_MASKED, np.float32))

        group = b.op("Div", self.num_heads, self.num_kv_heads)
        max_new_1 = b.op("Reshape", max_new, self.one)
        q5 = b.op("Reshape", q_pad, b.op("Concat", num_seqs, max_new_1, self.num_kv_heads, group, self.head_dim, axis=0),
                  allowzero=1)  # [S', Q, Hkv, G, D]
        if decode:
            # Q = 1: scores^T [S', Hkv, L, G] = [K_ctx; K_new] q^T, softmax over L (axis 2),
            # out = P_ctx^T V_ctx + P_new^T V_new: the gathered K/V are never copied again.
            q_t = b.op("Transpose", q5, perm=[0, 2, 4, 3, 1])  # [S', Hkv, D, G, 1]
            q_t = b.op("Squeeze", q_t, b.ints(4))  # [S', Hkv, D, G]
            scores = b.op("Concat", b.op("MatMul", k_ctx, q_t), b.op("MatMul", k_new, q_t), axis=2)
            scores = self.soft_cap(scores)
            scores = b.op("Add", scores, unsq(b.op("Transpose", bias, perm=[0, 2, 1]), 1))  # + [S',1,L,1]
            probs = b.op("Transpose", b.op("Softmax", scores, axis=2), perm=[0, 1, 3, 2])  # [S',Hkv,G,L]
            split = b.op("Reshape", max_ctx, self.one)
            p_ctx = b.op("Slice", probs, self.zero, split, b.ints(3))
            p_new = b.op("Slice", probs, split, b.ints(2**62), b.ints(3))
            out = b.op("Add", b.op("MatMul", p_ctx, v_ctx), b.op("MatMul", p_new, v_new))  # [S',Hkv,G,D]
        else:
            k_all = b.op("Concat", k_ctx, k_new, axis=2)  # [S', Hkv, L, D]
            v_all = b.op("Concat", v_ctx, v_new, axis=2)
            q_h = b.op("Transpose", q5, perm=[0, 2, 3, 1, 4])  # [S', Hkv, G, Q, D]
            k_t = unsq(b.op("Transpose", k_all, perm=[0, 1, 3, 2]), 2)  # [S', Hkv, 1, D, L]
            scores = self.soft_cap(b.op("MatMul", q_h, k_t))
            scores = b.op("Add", scores, unsq(unsq(bias, 1), 1))  # + [S', 1, 1, Q, L]
            probs = b.op("Softmax", scores, axis=-1)
            out = b.op("Transpose", b.op("MatMul", probs, unsq(v_all, 2)), perm=[0, 3, 1, 2, 4])  # [S',Q,Hkv,G,D]
        num_rows = b.op("Mul", num_seqs, max_new_1)
        flat = b.op("Reshape", out, b.op("Concat", num_rows, self.num_heads, self.head_dim, axis=0), allowzero=1)
        return flat, max_new

    def soft_cap(self, scores: str) -> str:
        """c * tanh(s / c) when the softcap attribute c > 0; an If, so off costs nothing."""
        b = self.b
        capped = b.fresh("capped")
        then = helper.make_graph(
            [helper.make_node("Div", [scores, self.cap], [capped + "_d"]),
             helper.make_node("Tanh", [capped + "_d"], [capped + "_t"]),
             helper.make_node("Mul", [capped + "_t", self.cap], [capped])],
            "softcap_on", [], [helper.make_tensor_value_info(capped, TensorProto.FLOAT, None)])
        plain = b.fresh("uncapped")
        other = helper.make_graph([helper.make_node("Identity", [scores], [plain])], "softcap_off", [],
                                  [helper.make_tensor_value_info(plain, TensorProto.FLOAT, None)])
        on = b.op("Greater", self.cap, b.scalar(0.0, np.float32))
        out: str = b.op("If", on, then_branch=then, else_branch=other)
        return out


def op_functions(kv_dtype: str, *, fp8_pool_as_uint8: bool = False, dynamic: bool = False) -> list[onnx.FunctionProto]:
    """The local functions a model with a ``kv_dtype`` pool carries (``dynamic``: per-token
    scales, `trtkv.ops.schema.DYNAMIC_SCALE_STEPS`)."""
    return [kv_append_function(kv_dtype, dynamic=dynamic),
            paged_attention_function(kv_dtype, fp8_pool_as_uint8=fp8_pool_as_uint8, dynamic=dynamic)]


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

"""`trtkv::PagedAttention` lowered to shape-static standard ops, for builders without plugins.

The ONNX Runtime body (`trtkv.ops.onnx_functions`) pads sequences into decode and prefill
groups; that needs NonZero and tensor extents computed from data (the longest history),
which TensorRT cannot build without plugins (TensorRT-RTX has no NonZero). This body works
per token instead, and every extent comes from an input *shape*:

- history: each new token t attends over the M * B history slots of its sequence's block
  table row (M = block_tables width, B = block size), masked to ``j < context_lens[s]``;
- new tokens: t attends over all T new tokens of the step, masked to its own sequence and
  ``t' <= t`` (causal);
- both score blocks share one softmax; sliding window and soft-cap as in the reference.

Cost: O(T * (M * B + T)) scores and a [T, Hkv, M * B, D] gather of history rows, so it is
a correctness path (CI engines, small models) rather than a fast one; the plugin engine is
the fast path. The pool is only read (gathered), never written: the runtime writes the
step's K/V (the KVAppend outputs) into the pool after the step, as on ONNX Runtime.

fp8 pools follow TensorRT's typing rules (an FP8 tensor must come from a Quantize layer and
go to a Dequantize layer): KVAppend quantizes with QuantizeLinear, PagedAttention reads the
new tokens through DequantizeLinear, and the pool is bound as INT8 holding the E4M3 bit
patterns, gathered as int8 and decoded through an exact 256-entry table.

int8 with dynamic scales (``dynamic``): the pool rows are head_dim codes followed by one scale
exponent per group (the pool's last dimension says how many); KVAppend finds the exponents with
standard ops and both bodies decode through the reference's exponent table, so a lowered engine
needs no calibrated scales either.

Numerically checked against `trtkv.ops.reference` on ONNX Runtime (tests/ops/test_lowered.py).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto

from trtkv.ops.builder import GraphBuilder
from trtkv.ops.onnx_functions import (
    _MASKED,
    _dequantize,
    _dequantize_dynamic,
    _function,
    kv_append_function,
)
from trtkv.ops.schema import KV_APPEND, PAGED_ATTENTION

_I64 = TensorProto.INT64


#: Element type of the pool graph input a lowered model takes, when it differs from the KV dtype.
LOWERED_POOL_TYPES = {"fp8": TensorProto.INT8}


def lowered_paged_attention_function(kv_dtype: str, *, num_scales: int = 1, dynamic: bool = False) -> onnx.FunctionProto:
    """Token-level body of `trtkv::PagedAttention` (see module docstring).

    ``num_scales``: entries of k_scale/v_scale (1 or Hkv); fixes the fp8 Q/DQ axis.
    ``dynamic``: int8 rows of head_dim codes + one scale exponent per group (the pool's width
    says how many), decoded with the same table as the reference.
    """
    return _LoweredBody(kv_dtype, num_scales, dynamic).build()


def lowered_kv_append_function(kv_dtype: str, *, num_scales: int = 1, dynamic: bool = False) -> onnx.FunctionProto:
    """`trtkv::KVAppend` for a lowered model: the stored codes only (the runtime writes the pool).
    fp8 quantizes with QuantizeLinear (saturating, round-to-nearest-even), as TensorRT requires;
    int8 with dynamic scales finds each group's exponent with standard ops (no Q/DQ)."""
    if kv_dtype != "fp8":
        return kv_append_function(kv_dtype, dynamic=dynamic)
    b = GraphBuilder("kval_", constants_as_nodes=True)
    key, value, _slots, _pool, k_scale, v_scale = KV_APPEND.input_names
    zero = b.const(np.zeros((num_scales,) if num_scales > 1 else (), ml_dtypes.float8_e4m3fn))
    for x, scale, out in ((key, k_scale, "key_stored"), (value, v_scale, "value_stored")):
        xf = b.op("Cast", x, to=TensorProto.FLOAT)
        if num_scales > 1:
            b.op("QuantizeLinear", xf, scale, zero, axis=1, saturate=1, outputs=[out])
        else:
            b.op("QuantizeLinear", xf, b.op("Squeeze", scale, b.ints(0)), zero, saturate=1, outputs=[out])
    return _function(KV_APPEND.name, b, KV_APPEND.input_names, list(KV_APPEND.output_names), {})


def lowered_op_functions(kv_dtype: str, *, num_scales: int = 1, dynamic: bool = False) -> list[onnx.FunctionProto]:
    """The local functions of a model whose trtkv ops are lowered to standard layers."""
    if dynamic and kv_dtype != "int8":
        raise ValueError(f"dynamic KV scales are int8 only, not {kv_dtype}")
    return [lowered_kv_append_function(kv_dtype, num_scales=num_scales, dynamic=dynamic),
            lowered_paged_attention_function(kv_dtype, num_scales=num_scales, dynamic=dynamic)]


class _LoweredBody:
    def __init__(self, kv_dtype: str, num_scales: int, dynamic: bool = False) -> None:
        self.kv_dtype, self.per_head, self.dynamic = kv_dtype, num_scales > 1, dynamic
        self.head_dim = self.groups = ""  # set by build()
        self.b = GraphBuilder("pal_", constants_as_nodes=True)

    def dim(self, tensor: str, axis: int) -> str:
        return self.b.op("Gather", self.b.op("Shape", tensor), self.b.ints(axis), axis=0)  # [1]

    def unsq(self, x: str, *axes: int) -> str:
        return self.b.op("Unsqueeze", x, self.b.ints(*axes))

    def arange(self, n: str) -> str:
        """[0, n) for a [1]-shaped extent taken from a shape."""
        b = self.b
        return b.op("Range", b.scalar(0, np.int64), b.op("Squeeze", n, b.ints(0)), b.scalar(1, np.int64))

    def decode_pool(self, rows: str, scale: str) -> str:
        """Gathered pool rows [T, Hkv, L, W] -> float32 [T, Hkv, L, D] (scale per KV head on axis 1)."""
        b = self.b
        if self.dynamic:
            return _dequantize_dynamic(b, rows, self.groups, self.head_dim)
        if self.kv_dtype == "fp8":  # int8-typed E4M3 bit patterns -> table index (byte value)
            table = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
            byte = b.op("Mod", b.op("Add", b.op("Cast", rows, to=TensorProto.INT32), b.scalar(256, np.int32)),
                        b.scalar(256, np.int32))
            return b.op("Mul", b.op("Gather", b.const(table), byte, axis=0), self.unsq(scale, 1, 2))
        return _dequantize(b, rows, scale, self.kv_dtype, trailing=2)

    def decode_new(self, x: str, scale: str) -> str:
        """The step's stored K/V [T, Hkv, W] -> float32 [T, Hkv, D]."""
        b = self.b
        if self.dynamic:
            return _dequantize_dynamic(b, x, self.groups, self.head_dim)
        if self.kv_dtype != "fp8":
            return _dequantize(b, x, scale, self.kv_dtype)
        if self.per_head:
            return b.op("DequantizeLinear", x, scale, axis=1)
        return b.op("DequantizeLinear", x, b.op("Squeeze", scale, b.ints(0)))

    def build(self) -> onnx.FunctionProto:
        b, unsq = self.b, self.unsq
        query, key, value, pool, qsl, ctx_lens, tables, k_scale, v_scale = PAGED_ATTENTION.input_names
        num_tokens, num_heads, head_dim = self.dim(query, 0), self.dim(query, 1), self.dim(query, 2)
        num_kv_heads, block_size, pool_width = self.dim(pool, 3), self.dim(pool, 2), self.dim(pool, 4)
        self.head_dim = head_dim
        if self.dynamic:  # G exponent bytes follow the codes of a row
            self.groups = b.op("Sub", pool_width, head_dim)
        width = self.dim(tables, 1)
        group = b.op("Div", num_heads, num_kv_heads)

        # Sequence of each token: s(t) = #(ends <= t); its position in the sequence.
        qsl64 = b.op("Cast", qsl, to=_I64)
        starts = b.op("Slice", qsl64, b.ints(0), b.ints(-1))
        ends = b.op("Slice", qsl64, b.ints(1), b.ints(2**62))
        tok = self.arange(num_tokens)  # [T]
        seq_of = b.op("ReduceSum", b.op("Cast", b.op("GreaterOrEqual", unsq(tok, 1), unsq(ends, 0)), to=_I64),
                      b.ints(1), keepdims=0)
        # Padding tokens past query_start_loc[S] would index past S: park them on sequence 0.
        num_seqs = self.dim(ctx_lens, 0)
        padded = b.op("GreaterOrEqual", seq_of, num_seqs)
        seq_of = b.op("Where", padded, b.scalar(0, np.int64), seq_of)
        ctx = b.op("Gather", b.op("Cast", ctx_lens, to=_I64), seq_of, axis=0)  # [T]
        pos = b.op("Add", ctx, b.op("Sub", tok, b.op("Gather", starts, seq_of, axis=0)))  # [T]

        # Queries [T, Hkv, G, D], softmax scale folded in.
        attr_scale = b.attr_const("scale", "float")
        default = b.op("Div", b.scalar(1.0, np.float32), b.op("Sqrt", b.op("Cast", head_dim, to=TensorProto.FLOAT)))
        sm_scale = b.op("Where", b.op("Greater", attr_scale, b.scalar(0.0, np.float32)), attr_scale, default)
        q = b.op("Mul", b.op("Cast", query, to=TensorProto.FLOAT), sm_scale)
        q4 = b.op("Reshape", q, b.op("Concat", num_tokens, num_kv_heads, group, head_dim, axis=0), allowzero=1)

        # History slots j in [0, M*B) of each token's sequence, through the block table.
        hist_len = b.op("Mul", width, block_size)
        j = self.arange(hist_len)  # [MB]
        flat_tables = b.op("Reshape", b.op("Cast", tables, to=_I64), b.ints(-1))
        blk_idx = b.op("Add", b.op("Mul", unsq(seq_of, 1), width), unsq(b.op("Div", j, block_size), 0))  # [T, MB]
        blocks = b.op("Gather", flat_tables, blk_idx, axis=0)
        hist_ok = b.op("Less", unsq(j, 0), unsq(ctx, 1))  # [T, MB]
        two_b = b.op("Mul", block_size, b.ints(2))
        k_slot = b.op("Add", b.op("Mul", blocks, two_b), unsq(b.op("Mod", j, block_size), 0))
        k_slot = b.op("Where", hist_ok, k_slot, b.scalar(0, np.int64))
        heads = unsq(self.arange(num_kv_heads), 0, 2)  # [1, Hkv, 1]

        def head_rows(slots: str) -> str:  # [T, MB] slot rows -> [T, Hkv, MB] (slot, head) rows
            return b.op("Add", b.op("Mul", unsq(slots, 1), num_kv_heads), heads)

        pool_rows = b.op("Reshape", pool, b.op("Concat", b.ints(-1), pool_width, axis=0))  # [N*2*B*Hkv, W]
        k_hist = self.decode_pool(b.op("Gather", pool_rows, head_rows(k_slot), axis=0), k_scale)  # [T,Hkv,MB,D]
        v_slot = b.op("Add", k_slot, block_size)
        v_hist = self.decode_pool(b.op("Gather", pool_rows, head_rows(v_slot), axis=0), v_scale)

        # New tokens [Hkv, T', D] (already the stored codes; decode them).
        k_new = b.op("Transpose", self.decode_new(key, k_scale), perm=[1, 0, 2])
        v_new = b.op("Transpose", self.decode_new(value, v_scale), perm=[1, 0, 2])

        # Scores: history [T, Hkv, G, MB]; new tokens [Hkv, T*G, T'] -> [T, Hkv, G, T'].
        s_hist = b.op("MatMul", q4, b.op("Transpose", k_hist, perm=[0, 1, 3, 2]))
        q_by_head = b.op("Reshape", b.op("Transpose", q4, perm=[1, 0, 2, 3]),
                         b.op("Concat", num_kv_heads, b.ints(-1), head_dim, axis=0))  # [Hkv, T*G, D]
        s_new = b.op("MatMul", q_by_head, b.op("Transpose", k_new, perm=[0, 2, 1]))  # [Hkv, T*G, T']
        s_new4 = b.op("Transpose", b.op("Reshape", s_new, b.op("Concat", num_kv_heads, num_tokens, group, num_tokens,
                                                                axis=0), allowzero=1), perm=[1, 0, 2, 3])
        scores = self.soft_cap(b.op("Concat", s_hist, s_new4, axis=3))  # [T, Hkv, G, MB + T']

        # Masks [T, MB + T']: history valid; new token of the same sequence and not later.
        same = b.op("Equal", unsq(seq_of, 1), unsq(seq_of, 0))
        causal = b.op("LessOrEqual", unsq(tok, 0), unsq(tok, 1))
        new_ok = b.op("And", same, causal)
        window = b.op("Cast", b.attr_const("sliding_window", "int"), to=_I64)
        no_window = b.op("LessOrEqual", window, b.scalar(0, np.int64))
        hist_pos = b.op("Expand", unsq(j, 0), b.op("Concat", num_tokens, hist_len, axis=0))
        new_pos = b.op("Expand", unsq(pos, 0), b.op("Concat", num_tokens, num_tokens, axis=0))
        key_pos = b.op("Concat", hist_pos, new_pos, axis=1)  # [T, MB + T']
        in_window = b.op("Or", no_window, b.op("Greater", key_pos, b.op("Sub", unsq(pos, 1), window)))
        ok = b.op("And", b.op("Concat", hist_ok, new_ok, axis=1), in_window)
        bias = b.op("Where", ok, b.scalar(0.0, np.float32), b.scalar(_MASKED, np.float32))
        probs = b.op("Softmax", b.op("Add", scores, unsq(bias, 1, 2)), axis=3)

        split = hist_len
        p_hist = b.op("Slice", probs, b.ints(0), split, b.ints(3))  # [T, Hkv, G, MB]
        p_new = b.op("Slice", probs, split, b.ints(2**62), b.ints(3))  # [T, Hkv, G, T']
        out_hist = b.op("MatMul", p_hist, v_hist)  # [T, Hkv, G, D]
        p_new_h = b.op("Reshape", b.op("Transpose", p_new, perm=[1, 0, 2, 3]),
                       b.op("Concat", num_kv_heads, b.ints(-1), num_tokens, axis=0), allowzero=1)  # [Hkv, T*G, T']
        out_new = b.op("Reshape", b.op("MatMul", p_new_h, v_new),
                       b.op("Concat", num_kv_heads, num_tokens, group, head_dim, axis=0), allowzero=1)
        out = b.op("Add", out_hist, b.op("Transpose", out_new, perm=[1, 0, 2, 3]))
        out = b.op("Reshape", out, b.op("Concat", num_tokens, num_heads, head_dim, axis=0), allowzero=1)
        out = b.op("Where", unsq(padded, 1, 2), b.scalar(0.0, np.float32), out)  # padding rows: zeros
        b.op("CastLike", out, "query", outputs=["output"])
        attrs = {a.name: a.default for a in PAGED_ATTENTION.attributes}
        return _function(PAGED_ATTENTION.name, b, PAGED_ATTENTION.input_names, ["output"], attrs)

    def soft_cap(self, scores: str) -> str:
        """c * tanh(s / c) when the softcap attribute c > 0, else s (a Where: no If subgraph,
        which keeps the body a straight-line graph for TensorRT)."""
        b = self.b
        cap = b.attr_const("softcap", "float")
        on = b.op("Greater", cap, b.scalar(0.0, np.float32))
        safe = b.op("Where", on, cap, b.scalar(1.0, np.float32))
        capped = b.op("Mul", b.op("Tanh", b.op("Div", scores, safe)), safe)
        out: str = b.op("Where", on, capped, scores)
        return out


__all__ = [
    "LOWERED_POOL_TYPES", "lowered_kv_append_function", "lowered_op_functions", "lowered_paged_attention_function",
]

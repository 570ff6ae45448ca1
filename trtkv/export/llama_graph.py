"""The Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) as an ONNX graph over trtkv ops.

Every activation is packed: [T, ...] over the step's new tokens, so one graph serves prefill
chunks and decode tokens of many sequences at once. Numerics mirror transformers: RMSNorm in
float32 then cast, RoPE tables computed in float32 from HF's own inv_freq / attention scaling,
activations in the weight dtype, logits returned as float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from trtkv.export.checkpoint import ArchSpec
from trtkv.manifest import (
    INPUT_NAMES,
    KEY_STORED_OUTPUT,
    KV_CACHE_INPUT,
    LOGITS_OUTPUT,
    VALUE_STORED_OUTPUT,
)
from trtkv.ops.builder import GraphBuilder
from trtkv.ops.onnx_functions import KV_ONNX_TYPES, emit_kv_append, emit_paged_attention

COMPUTE_TYPES = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}

#: get(name) -> numpy array already in the export dtype (bf16 as uint16 bit patterns).
WeightFn = Callable[[str], np.ndarray]


class LlamaGraph:
    """Emits the decoder into a `GraphBuilder`; one method per block of the model."""

    def __init__(self, spec: ArchSpec, dtype: str, kv_dtype: str, weights: WeightFn,
                 matmul_linear: bool = False) -> None:
        self.spec, self.dtype, self.kv_dtype = spec, dtype, kv_dtype
        self.ct = COMPUTE_TYPES[dtype]
        self.weights = weights
        self.matmul_linear = matmul_linear
        """Linear layers as MatMul(x, W^T) (+ Add) instead of Gemm(transB): the form weight-only
        quantization (`trtkv.export.weights`) rewrites into MatMulNBits."""
        self.b = GraphBuilder()

    # -- weights -------------------------------------------------------------------------
    def w(self, name: str) -> str:
        arr = self.weights(name)
        onnx_type = TensorProto.BFLOAT16 if self.dtype == "bf16" else None
        return self.b.initializer(arr, name, onnx_type)

    def linear(self, x: str, prefix: str, bias: bool) -> str:
        if self.matmul_linear:
            return self._matmul(x, f"{prefix}.weight", f"{prefix}.bias" if bias else None)
        inputs = [x, self.w(f"{prefix}.weight")]
        if bias:
            inputs.append(self.w(f"{prefix}.bias"))
        out: str = self.b.op("Gemm", *inputs, transB=1)
        return out

    def _matmul(self, x: str, weight_name: str, bias_name: str | None) -> str:
        """x @ W^T with W^T stored as an initializer [in, out] (named ``<weight>.T``)."""
        arr = np.ascontiguousarray(np.asarray(self.weights(weight_name)).T)
        onnx_type = TensorProto.BFLOAT16 if self.dtype == "bf16" else None
        out: str = self.b.op("MatMul", x, self.b.initializer(arr, f"{weight_name}.T", onnx_type))
        if bias_name is not None:
            out = self.b.op("Add", out, self.w(bias_name))
        return out

    def rms_norm(self, x: str, weight_name: str) -> str:
        """x / sqrt(mean(x^2) + eps) * w in float32; written with Pow so ONNX Runtime's
        optimizer fuses it into one SimplifiedLayerNormalization kernel (Mul(x, x) it does not)."""
        b = self.b
        x32 = b.op("Cast", x, to=TensorProto.FLOAT)
        var = b.op("ReduceMean", b.op("Pow", x32, b.scalar(2.0, np.float32)), b.ints(-1), keepdims=1)
        eps = b.scalar(self.spec.rms_norm_eps, np.float32)
        y = b.op("Div", x32, b.op("Sqrt", b.op("Add", var, eps)))
        out: str = b.op("Mul", self.w(weight_name), b.op("Cast", y, to=self.ct))
        return out

    # -- rope ----------------------------------------------------------------------------
    def rope_tables(self, inv_freq: np.ndarray, attention_scaling: float) -> tuple[str, str]:
        """cos and the signed sin [T, 1, D] in the compute dtype, from positions [T]: the sin
        table carries rotate-half's sign (-sin on the first half), once per step, so
        `apply_rope` needs no Neg per layer."""
        b = self.b
        pos = b.op("Unsqueeze", b.op("Cast", "positions", to=TensorProto.FLOAT), b.ints(1))
        freqs = b.op("Mul", pos, b.const(inv_freq.astype(np.float32)[None, :]))
        emb = b.op("Concat", freqs, freqs, axis=-1)
        half = inv_freq.shape[0]
        sign = np.concatenate([-np.ones(half, np.float32), np.ones(half, np.float32)])[None, :]
        tables = []
        for fn in ("Cos", "Sin"):
            t = b.op(fn, emb)
            if attention_scaling != 1.0:
                t = b.op("Mul", t, b.scalar(attention_scaling, np.float32))
            if fn == "Sin":
                t = b.op("Mul", t, b.const(sign))  # exact: a sign flip
            tables.append(b.op("Unsqueeze", b.op("Cast", t, to=self.ct), b.ints(1)))
        return tables[0], tables[1]

    def apply_rope(self, x: str, cos: str, signed_sin: str) -> str:
        """x * cos + rotate_half(x) * sin, with rotate_half(x) * sin = roll(x, D/2) * signed_sin
        (the halves swapped by one Gather): bit for bit HF's result, three kernels fewer."""
        b, half = self.b, self.spec.head_dim // 2
        swap = b.const(np.concatenate([np.arange(half, 2 * half), np.arange(half)]).astype(np.int64))
        rolled = b.op("Gather", x, swap, axis=-1)
        out: str = b.op("Add", b.op("Mul", x, cos), b.op("Mul", rolled, signed_sin))
        return out

    # -- blocks --------------------------------------------------------------------------
    def attention(self, x: str, i: int, cos: str, sin: str) -> str:
        b, s = self.b, self.spec
        p = f"model.layers.{i}.self_attn"
        q = b.op("Reshape", self.linear(x, f"{p}.q_proj", s.attention_bias), b.ints(0, s.num_heads, s.head_dim))
        k = b.op("Reshape", self.linear(x, f"{p}.k_proj", s.attention_bias), b.ints(0, s.num_kv_heads, s.head_dim))
        v = b.op("Reshape", self.linear(x, f"{p}.v_proj", s.attention_bias), b.ints(0, s.num_kv_heads, s.head_dim))
        if s.qk_norm:
            q = self.rms_norm(q, f"{p}.q_norm.weight")
            k = self.rms_norm(k, f"{p}.k_norm.weight")
        q, k = self.apply_rope(q, cos, sin), self.apply_rope(k, cos, sin)
        pool = KV_CACHE_INPUT.format(layer=i)
        k_scale, v_scale = f"k_scale.{i}", f"v_scale.{i}"
        ks, vs = emit_kv_append(b, k, v, "slot_mapping", pool, k_scale, v_scale, prefix=f".{i}")
        attn = emit_paged_attention(
            b, q, ks, vs, pool, "query_start_loc", "context_lens", "block_tables", k_scale, v_scale,
            scale=s.head_dim**-0.5, sliding_window=s.sliding_windows[i], softcap=0.0, prefix=f".{i}",
        )
        attn = b.op("Reshape", attn, b.ints(0, s.num_heads * s.head_dim))
        return self.linear(attn, f"{p}.o_proj", False)

    def mlp(self, x: str, i: int) -> str:
        b, p, bias = self.b, f"model.layers.{i}.mlp", self.spec.mlp_bias
        gate = self.linear(x, f"{p}.gate_proj", bias)
        act = b.op("Mul", gate, b.op("Sigmoid", gate))
        return self.linear(b.op("Mul", act, self.linear(x, f"{p}.up_proj", bias)), f"{p}.down_proj", bias)

    def build(
        self,
        inv_freq: np.ndarray,
        attention_scaling: float,
        kv_scales: list[tuple[np.ndarray, np.ndarray]],
        progress: Callable[[Any], Any] = iter,
    ) -> Any:
        """Emit the whole decoder and return the ONNX GraphProto."""
        b, s = self.b, self.spec
        cos, sin = self.rope_tables(inv_freq, attention_scaling)
        h = b.op("Gather", self.w("model.embed_tokens.weight"), "input_ids", axis=0)
        for i in progress(range(s.num_layers)):
            k_scale, v_scale = kv_scales[i]
            b.initializer(k_scale.astype(np.float32), f"k_scale.{i}")
            b.initializer(v_scale.astype(np.float32), f"v_scale.{i}")
            h = b.op("Add", h, self.attention(self.rms_norm(h, f"model.layers.{i}.input_layernorm.weight"), i, cos, sin))
            h = b.op("Add", h, self.mlp(self.rms_norm(h, f"model.layers.{i}.post_attention_layernorm.weight"), i))
        last = b.op("Gather", h, "logits_indices", axis=0)
        last = self.rms_norm(last, "model.norm.weight")
        head_name = "model.embed_tokens.weight" if s.tie_word_embeddings else "lm_head.weight"
        if self.matmul_linear:  # a transposed copy of a tied table: the Gather keeps the original
            logits = self._matmul(last, head_name, None)
        else:
            head = head_name if s.tie_word_embeddings else self.w(head_name)
            logits = b.op("Gemm", last, head, transB=1)
        b.op("Cast", logits, to=TensorProto.FLOAT, outputs=[LOGITS_OUTPUT])
        return helper.make_graph(b.nodes, f"trtkv_{s.model_type}", self.inputs(), self.outputs(), b.initializers)

    def inputs(self) -> list[Any]:
        vi, s = helper.make_tensor_value_info, self.spec
        shapes = {
            "input_ids": (TensorProto.INT64, ["num_tokens"]),
            "positions": (TensorProto.INT64, ["num_tokens"]),
            "query_start_loc": (TensorProto.INT32, ["num_seqs_plus_1"]),
            "context_lens": (TensorProto.INT32, ["num_seqs"]),
            "block_tables": (TensorProto.INT32, ["num_seqs", "max_blocks_per_seq"]),
            "slot_mapping": (TensorProto.INT64, ["num_tokens"]),
            "logits_indices": (TensorProto.INT64, ["num_logits"]),
        }
        ins = [vi(name, *shapes[name]) for name in INPUT_NAMES]
        pool_t = KV_ONNX_TYPES[self.kv_dtype]
        for i in range(s.num_layers):
            ins.append(vi(KV_CACHE_INPUT.format(layer=i), pool_t,
                          ["num_blocks", 2, "block_size", s.num_kv_heads, s.head_dim]))
        return ins

    def outputs(self) -> list[Any]:
        vi, s = helper.make_tensor_value_info, self.spec
        outs = [vi(LOGITS_OUTPUT, TensorProto.FLOAT, ["num_logits", s.vocab_size])]
        pool_t = KV_ONNX_TYPES[self.kv_dtype]
        for i in range(s.num_layers):
            outs.append(vi(KEY_STORED_OUTPUT.format(layer=i), pool_t, ["num_tokens", s.num_kv_heads, s.head_dim]))
            outs.append(vi(VALUE_STORED_OUTPUT.format(layer=i), pool_t, ["num_tokens", s.num_kv_heads, s.head_dim]))
        return outs

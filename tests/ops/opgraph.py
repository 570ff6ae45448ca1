"""A one-layer ONNX graph holding just the trtkv ops, to run their function bodies in ORT."""

from __future__ import annotations

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from trtkv.ops.builder import GraphBuilder
from trtkv.ops.lowered import lowered_op_functions
from trtkv.ops.onnx_functions import (
    KV_ONNX_TYPES,
    emit_kv_append,
    emit_paged_attention,
    op_functions,
    op_opset_imports,
)


def ops_session(kv_dtype: str, *, scale: float = 0.0, sliding_window: int = 0, softcap: float = 0.0,
                compute: int = TensorProto.FLOAT, lowered: bool = False,
                num_scales: int = 1, dynamic: bool = False, native: bool = False,
                write_pool: bool = False, optimized_model_filepath: str = "") -> ort.InferenceSession:
    """``lowered``: carry the shape-static bodies TensorRT builds (trtkv.ops.lowered); the fp8
    pool is then int8-typed bit patterns. ``native``: register the native CPU kernels
    (`trtkv.runtime.backends.native_ops`); ``write_pool``: their KVAppend also writes the pool."""
    b = GraphBuilder()
    ks, vs = emit_kv_append(b, "key", "value", "slot_mapping", "kv_cache", "k_scale", "v_scale", ".0")
    emit_paged_attention(
        b, "query", ks, vs, "kv_cache", "query_start_loc", "context_lens", "block_tables",
        "k_scale", "v_scale", scale=scale, sliding_window=sliding_window, softcap=softcap, prefix=".0",
    )
    b.op("Identity", b.nodes[-1].output[0], outputs=["output"])
    if write_pool:
        b.nodes[0].attribute.append(helper.make_attribute("write_pool", 1))
    pool_t = KV_ONNX_TYPES[kv_dtype]
    pool_in_t = pool_t if kv_dtype != "fp8" else (TensorProto.INT8 if lowered else TensorProto.UINT8)
    vi = helper.make_tensor_value_info
    inputs = [
        vi("query", compute, ["T", "H", "D"]), vi("key", compute, ["T", "Hkv", "D"]),
        vi("value", compute, ["T", "Hkv", "D"]), vi("slot_mapping", TensorProto.INT64, ["T"]),
        vi("kv_cache", pool_in_t, ["N", 2, "B", "Hkv", "Dp" if dynamic else "D"]),
        vi("query_start_loc", TensorProto.INT32, ["S1"]), vi("context_lens", TensorProto.INT32, ["S"]),
        vi("block_tables", TensorProto.INT32, ["S", "M"]),
        vi("k_scale", TensorProto.FLOAT, ["Ks"]), vi("v_scale", TensorProto.FLOAT, ["Ks"]),
    ]
    stored = "Dp" if dynamic else "D"  # dynamic scales: rows of head_dim + 1
    outputs = [vi("output", compute, ["T", "H", "D"]), vi("key_stored.0", pool_t, ["T", "Hkv", stored]),
               vi("value_stored.0", pool_t, ["T", "Hkv", stored])]
    graph = helper.make_graph(b.nodes, "ops", inputs, outputs, b.initializers)
    if lowered:
        functions = lowered_op_functions(kv_dtype, num_scales=num_scales, dynamic=dynamic)
    else:
        functions = op_functions(kv_dtype, fp8_pool_as_uint8=True, dynamic=dynamic)
    model = helper.make_model(graph, opset_imports=op_opset_imports(), functions=functions)
    model.ir_version = 10
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    if optimized_model_filepath:
        opts.optimized_model_filepath = optimized_model_filepath
    if native:
        from trtkv.runtime.backends.native_ops import native_ops_library

        opts.register_custom_ops_library(str(native_ops_library()))
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

"""trtkv.cpu::MatMulBf16 (bf16 linear layers on AMX, `--cpu-matmul`): the weight packing, the
rounding, the kernel against float64 products of the same bf16 inputs, and the graph rewrite."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import require_amx_bf16
from trtkv.errors import ConfigError
from trtkv.runtime.backends import BackendConfig, create_backend
from trtkv.runtime.backends.cpu_matmul import (
    CPU_DOMAIN,
    MATMUL_BF16,
    bf16_bits,
    check_cpu_matmul_mode,
    pack_weight,
    resolve_cpu_matmul,
    rewrite_matmuls,
)


def widen(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_bf16_bits_round_to_nearest_even_like_torch():
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(4096).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 4096),
        np.array([0.0, -0.0, np.inf, -np.inf, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.3895314e38, 1e-40, -1e-42], np.float32),
    ]).astype(np.float32)
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_bits(values), expected)
    nan = bf16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(widen(nan)).all()


@pytest.mark.parametrize("k,n", [(32, 32), (64, 96), (33, 31), (576, 49), (5, 70)])
def test_pack_weight_layout(k, n):
    rng = np.random.default_rng(k * n)
    bits = rng.integers(1, 2**16, size=(k, n), dtype=np.uint16)
    packed = pack_weight(bits)
    panels, steps = -(-n // 32), -(-k // 32)
    assert packed.shape == (panels, steps, 2, 16, 32)
    for p in range(panels):
        for s in range(steps):
            for t in range(2):
                for r in range(16):
                    for c in range(16):
                        for j in range(2):
                            row, col = s * 32 + 2 * r + j, p * 32 + t * 16 + c
                            want = bits[row, col] if row < k and col < n else 0
                            assert packed[p, s, t, r, 2 * c + j] == want


def _matmul_model(k: int, n: int, weight: np.ndarray, *, gemm: bool = False, bias: bool = False) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(weight, "W")]
    if gemm:
        inputs = ["x", "W", "C"] if bias else ["x", "W"]
        node = helper.make_node("Gemm", inputs, ["y"], transB=1)
        if bias:
            inits.append(numpy_helper.from_array(np.linspace(-1, 1, n, dtype=np.float32), "C"))
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])
    else:
        node = helper.make_node("MatMul", ["x", "W"], ["y"])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "m", k])
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _session(model: onnx.ModelProto, library, threads: int = 2) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(str(library))
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# M covers the AVX512-BF16 path (1-4 rows), one and two 16-row tiles, partial tiles, several
# 256-row work chunks; K and N cover tails of a 32-wide step / panel and a 16-column half.
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 16, 17, 31, 32, 33, 300, 600])
@pytest.mark.parametrize("k,n", [(576, 960), (33, 31), (64, 49), (100, 16), (7, 1)])
def test_kernel_matches_float64_of_the_rounded_inputs(m, k, n):
    library = require_amx_bf16()
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    weight = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    model = _matmul_model(k, n, weight)
    assert rewrite_matmuls(model) == 1
    x = rng.standard_normal((1, m, k)).astype(np.float32) * 3
    y = _session(model, library).run(None, {"x": x})[0]
    ref = widen(bf16_bits(x)).astype(np.float64) @ widen(bf16_bits(weight)).astype(np.float64)
    assert y.shape == (1, m, n) and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def test_kernel_one_thread_and_empty_batch():
    library = require_amx_bf16()
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((96, 64)).astype(np.float32)
    model = _matmul_model(96, 64, weight)
    rewrite_matmuls(model)
    session = _session(model, library, threads=1)
    x = rng.standard_normal((2, 40, 96)).astype(np.float32)
    ref = widen(bf16_bits(x)).astype(np.float64) @ widen(bf16_bits(weight)).astype(np.float64)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], ref, atol=1e-4)
    assert session.run(None, {"x": np.zeros((1, 0, 96), np.float32)})[0].shape == (1, 0, 64)


def test_kernel_refuses_a_wrong_input_width():
    library = require_amx_bf16()
    model = _matmul_model(64, 32, np.ones((64, 32), np.float32))
    rewrite_matmuls(model)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "k"  # let a wrong width through the graph
    with pytest.raises(Exception, match="last dimension must be k = 64"):
        _session(model, library).run(None, {"x": np.ones((1, 2, 63), np.float32)})


@pytest.mark.parametrize("bias", [False, True])
def test_rewrite_gemm_transb_with_and_without_bias(bias):
    library = require_amx_bf16()
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((48, 80)).astype(np.float32)  # [N, K]: Gemm(x, W, transB=1)
    model = _matmul_model(80, 48, weight, gemm=True, bias=bias)
    x = rng.standard_normal((7, 80)).astype(np.float32)
    assert rewrite_matmuls(model) == 1
    ops = [(node.domain, node.op_type) for node in model.graph.node]
    assert ops == [(CPU_DOMAIN, MATMUL_BF16)] + ([("", "Add")] if bias else [])
    assert [i.name for i in model.graph.initializer if i.name == "W"] == []  # nothing else read it
    ref = widen(bf16_bits(x)).astype(np.float64) @ widen(bf16_bits(weight)).T.astype(np.float64)
    if bias:
        ref += np.linspace(-1, 1, 48)
    np.testing.assert_allclose(_session(model, library).run(None, {"x": x})[0], ref, atol=1e-4)


def test_rewrite_keeps_a_shared_table_and_skips_non_constant_weights():
    table = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 1000
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("Gemm", ["emb", "table"], ["logits"], transB=1),  # a tied head
        helper.make_node("MatMul", ["emb", "w_in"], ["other"]),  # W is a graph input: left alone
        helper.make_node("Gemm", ["emb", "table"], ["scaled"], transB=1, alpha=2.0),  # alpha != 1: left alone
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["t"]),
         helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [32, 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("logits", "other", "scaled")],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert rewrite_matmuls(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Gather", MATMUL_BF16, "MatMul", "Gemm"]
    assert {i.name for i in model.graph.initializer} == {"table", "table.T.amx_bf16"}
    assert any(op.domain == CPU_DOMAIN for op in model.opset_import)


def test_modes_and_refusals(tmp_path):
    with pytest.raises(ConfigError, match="--cpu-matmul must be auto, bf16 or fp32"):
        check_cpu_matmul_mode("int8")
    assert resolve_cpu_matmul("fp32", "bf16", None) is False
    assert resolve_cpu_matmul("auto", "bf16", None) is False  # no native library: float32 compute
    with pytest.raises(ConfigError, match="--cpu-matmul bf16: the native CPU kernels are off"):
        resolve_cpu_matmul("bf16", "fp32", None)
    not_a_library = tmp_path / "libnothing.so"
    not_a_library.write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot be loaded or is stale"):
        resolve_cpu_matmul("bf16", "fp32", not_a_library)
    assert resolve_cpu_matmul("auto", "fp32", not_a_library) is False  # never probed for an fp32 export
    with pytest.raises(ConfigError, match="--cpu-matmul bf16 is for the onnxruntime backend"):
        BackendConfig(backend="tensorrt", cpu_matmul="bf16")


def test_bf16_refused_where_nothing_would_run_in_bf16(exported_factory):
    require_amx_bf16()
    with pytest.raises(ConfigError, match="no float32 / bf16 linear layers"):
        create_backend(str(exported_factory("llama", dtype="fp16")), BackendConfig(num_blocks=8, cpu_matmul="bf16"))


def test_a_weight_read_transposed_and_plain_gets_two_packings():
    library = require_amx_bf16()
    rng = np.random.default_rng(9)
    w = rng.standard_normal((64, 64)).astype(np.float32)  # square: a shared packing would pass shape checks
    nodes = [helper.make_node("Gemm", ["x", "W"], ["a"], transB=1), helper.make_node("MatMul", ["x", "W"], ["b"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 64])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in "ab"],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert rewrite_matmuls(model) == 2
    x = rng.standard_normal((3, 64)).astype(np.float32)
    a, b = _session(model, library).run(None, {"x": x})
    xr, wr = widen(bf16_bits(x)).astype(np.float64), widen(bf16_bits(w)).astype(np.float64)
    np.testing.assert_allclose(a, xr @ wr.T, atol=1e-4)
    np.testing.assert_allclose(b, xr @ wr, atol=1e-4)


def test_a_weight_that_is_also_a_graph_output_is_kept():
    w = np.ones((32, 32), np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("W", TensorProto.FLOAT, [32, 32])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert rewrite_matmuls(model) == 1
    assert {i.name for i in model.graph.initializer} == {"W", "W.amx_bf16"}


def test_auto_takes_bf16_exports_only():
    library = require_amx_bf16()
    assert resolve_cpu_matmul("auto", "bf16", library) is True
    assert resolve_cpu_matmul("auto", "fp32", library) is False
    assert resolve_cpu_matmul("bf16", "fp32", library) is True

"""bf16 MatMuls on CPUs with AMX for the ONNX Runtime backend (``--cpu-matmul``).

ONNX Runtime's x86 kernels have no bf16 MatMul, so a bf16 export otherwise runs its linear
layers in float32 from weights widened at load (twice the bytes per decode step, and float32
Gemm throughput for prefill). With the native library (`native_ops`) on a CPU with AMX-BF16,
each linear layer (``MatMul(x, W)`` / ``Gemm(x, W, transB)`` with a constant 2-D W) becomes
``trtkv.cpu::MatMulBf16``: W stays bf16 (rounded to nearest even from a float32 export),
packed here once into the tile layout the kernel reads (``plugins/cpu/amx_matmul.h``); x is
rounded to bf16 inside the kernel; products accumulate in float32. Everything else in the
graph (norms, rotary, attention, the KV pool) keeps its own precision.

Modes: ``auto`` (bf16 exports where AMX is available, float32 compute otherwise), ``bf16``
(every float32 / bf16 weight; refused with a line where AMX or the native library is
missing), ``fp32`` (never).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from trtkv.errors import ConfigError

CPU_MATMUL_MODES = ("auto", "bf16", "fp32")
CPU_DOMAIN = "trtkv.cpu"
MATMUL_BF16 = "MatMulBf16"
STEP = 32  # K per tile row and output columns per panel (amx_matmul.h)


def check_cpu_matmul_mode(mode: str) -> None:
    """Raises ConfigError unless ``mode`` is one of `CPU_MATMUL_MODES`."""
    if mode not in CPU_MATMUL_MODES:
        raise ConfigError(f"--cpu-matmul must be auto, bf16 or fp32, got {mode!r}")


@lru_cache(maxsize=4)
def amx_bf16_reason(library: Path) -> str:
    """Why the native library cannot run MatMulBf16 here ('' when it can): the CPU's flags and
    the kernel's permission for the tile state, as the library itself checks them."""
    try:
        probe = ctypes.CDLL(str(library)).trtkv_native_amx_bf16
    except (OSError, AttributeError) as exc:
        return f"the native library {library} cannot be loaded or is stale ({exc}); delete it to rebuild"
    probe.restype = ctypes.c_int
    if not probe():
        return "this CPU has no AMX-BF16 (Intel Xeon 4th generation or newer) or the kernel refuses its tile state"
    return ""


def amx_bf16_available(library: Path) -> bool:
    """Whether the native library can run MatMulBf16 here."""
    return not amx_bf16_reason(library)


def resolve_cpu_matmul(mode: str, model_dtype: str, library: Path | None) -> bool:
    """Whether this backend rewrites the linear layers to bf16 on AMX.

    Raises:
        ConfigError: ``bf16`` where the native library or AMX-BF16 is missing (says which).
    """
    check_cpu_matmul_mode(mode)
    if mode == "fp32" or (mode == "auto" and model_dtype != "bf16"):
        return False
    why = ("the native CPU kernels are off or cannot be built here (--native-ops)" if library is None
           else amx_bf16_reason(library))
    if why and mode == "bf16":
        raise ConfigError(f"--cpu-matmul bf16: {why}; use --cpu-matmul fp32")
    return not why


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def pack_weight(bits: np.ndarray) -> np.ndarray:
    """A [K, N] bf16 weight (uint16 bits) in the kernel's layout [P, S, 2, 16, 32]: panels of
    32 columns, K in steps of 32, two 16-column tiles whose row r holds the pairs
    (W[2r], W[2r + 1]) of each column; zero-padded to multiples of 32."""
    k, n = bits.shape
    kp, np_ = -(-k // STEP) * STEP, -(-n // STEP) * STEP
    padded = np.zeros((kp, np_), dtype=np.uint16)
    padded[:k, :n] = bits
    s, p = kp // STEP, np_ // STEP
    # (s, r, j, p, t, c) -> (p, s, t, r, c, j)
    return np.ascontiguousarray(padded.reshape(s, 16, 2, p, 2, 16).transpose(3, 0, 4, 1, 5, 2)).reshape(p, s, 2, 16, STEP)


def _linear_weight(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[onnx.TensorProto, bool] | None:
    """(W, transposed) when ``node`` is a linear layer this rewrite takes: ``MatMul(x, W)`` or
    ``Gemm(x, W[, C])`` (transA 0, alpha / beta 1), W a constant float32 / bf16 2-D initializer."""
    if node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "MatMul" and len(node.input) == 2:
        transposed = False
    elif node.op_type == "Gemm" and len(node.input) <= 3:
        if attrs.get("transA", helper.make_attribute("transA", 0)).i != 0:
            return None
        if any(name in attrs and attrs[name].f != 1.0 for name in ("alpha", "beta")):
            return None
        transposed = "transB" in attrs and attrs["transB"].i == 1
    else:
        return None
    weight = inits.get(node.input[1])
    if weight is None or len(weight.dims) != 2 or weight.data_type not in (TensorProto.FLOAT, TensorProto.BFLOAT16):
        return None
    return weight, transposed


def _weight_bits(weight: onnx.TensorProto, transposed: bool) -> np.ndarray:
    """W as [K, N] bf16 bits."""
    rows, cols = int(weight.dims[0]), int(weight.dims[1])
    if weight.data_type == TensorProto.BFLOAT16:
        raw = weight.raw_data if weight.raw_data else np.asarray(weight.int32_data, np.uint16).tobytes()
        bits = np.frombuffer(raw, dtype=np.uint16).reshape(rows, cols)
    else:
        bits = bf16_bits(onnx.numpy_helper.to_array(weight).reshape(rows, cols))
    return bits.T if transposed else bits


def _references(graph: onnx.GraphProto) -> list[str]:
    """Every name the graph reads: node inputs (subgraphs' too), graph inputs and outputs."""
    names = [v.name for v in (*graph.input, *graph.output)]
    for node in graph.node:
        names.extend(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names.extend(_references(sub))
    return names


def rewrite_matmuls(model: onnx.ModelProto) -> int:
    """Turns every linear layer of the main graph (`_linear_weight`) into
    ``trtkv.cpu::MatMulBf16(x, packed W)`` (+ ``Add`` of a Gemm's bias); returns how many.
    The packed weight replaces W when nothing else reads it (a tied embedding keeps its table)."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for name in _references(graph):
        readers[name] = readers.get(name, 0) + 1
    nodes: list[onnx.NodeProto] = []
    done, unread = 0, set()
    for node in graph.node:
        found = _linear_weight(node, inits)
        if found is None:
            nodes.append(node)
            continue
        weight, transposed = found
        bits = _weight_bits(weight, transposed)
        k, n = bits.shape
        name = f"{weight.name}{'.T' if transposed else ''}.amx_bf16"
        if name not in inits:
            packed = pack_weight(bits)
            tensor = helper.make_tensor(name, TensorProto.BFLOAT16, packed.shape, packed.tobytes(), raw=True)
            graph.initializer.append(tensor)
            inits[name] = tensor
        readers[weight.name] -= 1
        if readers[weight.name] == 0:
            unread.add(weight.name)
        bias = node.input[2] if len(node.input) == 3 and node.input[2] else ""
        product = f"{node.output[0]}.no_bias" if bias else node.output[0]
        nodes.append(helper.make_node(MATMUL_BF16, [node.input[0], name], [product], name=node.name or None,
                                      domain=CPU_DOMAIN, k=k, n=n))
        if bias:
            nodes.append(helper.make_node("Add", [product, bias], [node.output[0]]))
        done += 1
    del graph.node[:]
    graph.node.extend(nodes)
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name in unread:
            del graph.initializer[i]
    if done and not any(op.domain == CPU_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CPU_DOMAIN, 1))
    return done


__all__ = ["CPU_DOMAIN", "CPU_MATMUL_MODES", "MATMUL_BF16", "amx_bf16_available", "amx_bf16_reason", "bf16_bits", "check_cpu_matmul_mode", "pack_weight",
           "resolve_cpu_matmul", "rewrite_matmuls"]

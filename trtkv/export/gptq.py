"""GPTQ weight quantization (``--weight-algo gptq``): int8/int4 codes fitted to calibration
activations, emitted as ONNX Runtime ``MatMulNBits`` with integer zero points (its fast path).

Round to nearest quantizes each weight on its own. GPTQ (Frantar et al., 2022) quantizes one
input row of ``W`` [K, N] at a time and moves each row's rounding error onto the rows not yet
quantized, weighted by the inverse of the Hessian ``H = X^T X`` of the layer's inputs ``X``, so
that ``X W_q`` stays close to ``X W`` on the calibration activations rather than ``W_q`` to
``W``. Scales and zero points are fitted per group of ``group_size`` rows and output column, on
the error-updated rows, asymmetric (range min..max, zero included) with integer zero points.

The Hessians come from one forward pass of the float32 graph per calibration prompt (function
bodies, float32 pool, every token's logits), with every linear layer's input made a graph
output; all layers see float32 activations (not those of the already quantized layers before
them), which keeps calibration to one pass.

Owns the algorithm and the MatMulNBits packing; the prompts come from
`trtkv.export.calibrate.calibration_prompts`, the choice of weights from `trtkv.export.weights`.
Must not import torch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtkv.errors import ConfigError
from trtkv.manifest import KV_CACHE_INPUT, Manifest
from trtkv.runtime.backends.base import host_memory_bytes

#: GPTQ's damping: this share of the mean Hessian diagonal is added to it (the paper's 1%).
DAMP = 0.01
#: Input rows per lazy update block (a multiple of every group size up to 128).
BLOCK_ROWS = 128


class Codes(NamedTuple):
    """A quantized [K, N] weight: ``W ~ scales[g] * (codes - zero_points[g])`` for row k in group g.

    Attributes:
        codes: uint8 [K, N] in 0 .. 2**bits - 1.
        scales: float32 [K / group, N].
        zero_points: uint8 [K / group, N].
    """

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray

    def dequantize(self) -> np.ndarray:
        group = self.codes.shape[0] // self.scales.shape[0]
        s = np.repeat(self.scales, group, axis=0)
        z = np.repeat(self.zero_points, group, axis=0).astype(np.float32)
        return (s * (self.codes.astype(np.float32) - z)).astype(np.float32)


def _group_params(rows: np.ndarray, maxq: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale and integer zero point per column of ``rows`` [group, N] (range widened to 0)."""
    lo = np.minimum(rows.min(axis=0), 0.0)
    hi = np.maximum(rows.max(axis=0), 0.0)
    scale = (hi - lo) / maxq
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero group: any scale, zero point 0 codes it
    zero = np.clip(np.round(-lo / scale), 0, maxq)
    return scale, zero


def gptq(weight: np.ndarray, hessian: np.ndarray, bits: int, group_size: int, damp: float = DAMP) -> Codes:
    """Quantize ``weight`` [K, N] (``y = x @ weight``) against ``hessian`` [K, K] (``X^T X``).

    Args:
        weight: float [K, N], K a multiple of ``group_size``.
        hessian: float [K, K], symmetric positive semi-definite; a zero diagonal entry (an input
            never active in calibration) makes that row quantize to zero.
        bits: 4 or 8.
        group_size: rows per scale; a power of two dividing ``BLOCK_ROWS`` or a multiple of it.

    Returns:
        The codes, with scales and zero points per group.
    """
    num_rows, num_cols = weight.shape
    assert num_rows % group_size == 0, (num_rows, group_size)
    maxq = 2**bits - 1
    w = weight.astype(np.float64, copy=True)
    h = hessian.astype(np.float64, copy=True)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h[np.diag_indices(num_rows)] += damp * np.mean(np.diag(h))
    # Upper Cholesky factor of H^-1: row i holds how row i's error spreads onto rows > i.
    lower = np.linalg.cholesky(h)
    inv_lower = np.linalg.solve(lower, np.eye(num_rows))
    upper = np.linalg.cholesky(inv_lower.T @ inv_lower).T
    codes = np.empty((num_rows, num_cols), np.uint8)
    num_groups = num_rows // group_size
    scales = np.empty((num_groups, num_cols), np.float64)
    zeros = np.empty((num_groups, num_cols), np.float64)
    block = max(BLOCK_ROWS, group_size)
    for b0 in range(0, num_rows, block):
        b1 = min(b0 + block, num_rows)
        wb = w[b0:b1]  # a view: the block's rows are updated in place
        errors = np.empty_like(wb)
        ub = upper[b0:b1, b0:b1]
        for i in range(b1 - b0):
            row = b0 + i
            if row % group_size == 0:
                g = row // group_size
                scales[g], zeros[g] = _group_params(wb[i:i + group_size], maxq)
            s, z = scales[row // group_size], zeros[row // group_size]
            q = np.clip(np.round(wb[i] / s) + z, 0, maxq)
            codes[row] = q
            err = (wb[i] - s * (q - z)) / ub[i, i]
            wb[i + 1:] -= np.outer(ub[i, i + 1:], err)
            errors[i] = err
        w[b1:] -= upper[b0:b1, b1:].T @ errors
    return Codes(codes, scales.astype(np.float32), zeros.astype(np.uint8))


def rtn(weight: np.ndarray, bits: int, group_size: int) -> Codes:
    """Round to nearest on the same grid as `gptq` (GPTQ with no error feedback)."""
    return gptq(weight, np.eye(weight.shape[0]), bits, group_size, damp=0.0)


def matmul_nbits(node: onnx.NodeProto, weight_name: str, q: Codes, bits: int, accuracy_level: int,
                 ) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """The ``com.microsoft MatMulNBits`` node replacing ``node`` (``MatMul(x, W)``), and its
    initializers: B uint8 [N, K/group, group*bits/8], scales float32 [N, K/group], zero points
    uint8 [N, ceil(K/group * bits/8)] (4 bits: two per byte, the lower block in the low nibble)."""
    num_rows, num_cols = q.codes.shape
    num_groups = q.scales.shape[0]
    group = num_rows // num_groups
    cols = q.codes.T.reshape(num_cols, num_groups, group)  # [N, blocks, group]
    zp = q.zero_points.T  # [N, blocks]
    if bits == 4:
        packed = (cols[..., 0::2] | (cols[..., 1::2] << 4)).astype(np.uint8)
        if num_groups % 2:
            zp = np.concatenate([zp, np.zeros((num_cols, 1), np.uint8)], axis=1)
        zp = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
    else:
        packed = np.ascontiguousarray(cols, np.uint8)
    inits = [numpy_helper.from_array(np.ascontiguousarray(packed), f"{weight_name}_Q{bits}"),
             numpy_helper.from_array(np.ascontiguousarray(q.scales.T, np.float32), f"{weight_name}_scales"),
             numpy_helper.from_array(np.ascontiguousarray(zp), f"{weight_name}_zero_points")]
    attrs = {"K": num_rows, "N": num_cols, "bits": bits, "block_size": group}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    new = helper.make_node("MatMulNBits", [node.input[0], *(t.name for t in inits)], list(node.output),
                           name=f"{node.name}_Q{bits}", domain="com.microsoft", **attrs)
    return new, inits


def linear_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The MatMul nodes whose second input is a 2-D float32 initializer."""
    weights = {i.name for i in model.graph.initializer if len(i.dims) == 2 and i.data_type == TensorProto.FLOAT}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def collect_hessians(model: onnx.ModelProto, manifest: Manifest, prompts: Sequence[Sequence[int]],
                     inputs: Iterable[str], num_threads: int = 0) -> dict[str, np.ndarray]:
    """``X^T X`` (float64 [K, K]) of each tensor in ``inputs`` (MatMul activations) over every
    token of ``prompts``, each prompt one prefill through the float32 graph.

    ``model``: the export's graph (any KV dtype; calibration runs it on a float32 pool).
    """
    import onnxruntime as ort

    from trtkv.ops.schema import ceil_div
    from trtkv.runtime.backends.inputs import build_step_inputs
    from trtkv.runtime.backends.onnxruntime_backend import set_kv_format
    from trtkv.runtime.plan import ScheduledSeq, StepPlan

    names = sorted(set(inputs))
    fp32 = manifest.with_kv("fp32")
    graph = copy.deepcopy(model)
    set_kv_format(graph, fp32)
    del graph.graph.output[:]
    graph.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if num_threads:
        opts.intra_op_num_threads = num_threads
    session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    del graph
    block = fp32.block_size
    hessians: dict[str, np.ndarray] = {}
    for prompt in prompts:
        num_blocks = ceil_div(len(prompt), block)
        plan = StepPlan(seqs=(ScheduledSeq(0, tuple(prompt), 0, tuple(range(num_blocks)), True, all_logits=True),))
        feeds: dict[str, np.ndarray] = build_step_inputs(plan, block).as_dict()
        pool = np.zeros((num_blocks, 2, block, fp32.num_kv_heads, fp32.pool_head_dim), np.float32)
        feeds.update({KV_CACHE_INPUT.format(layer=i): pool for i in range(fp32.num_layers)})
        for name, x in zip(names, session.run(names, feeds), strict=True):
            x = x.reshape(-1, x.shape[-1]).astype(np.float64)
            if name in hessians:
                hessians[name] += x.T @ x
            else:
                hessians[name] = x.T @ x
    return hessians


def check_memory(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto]) -> None:
    """The Hessians (float64 K x K per distinct MatMul input, all held until fitting) and the
    calibration copy of the graph's weights must fit in this machine's memory.

    Raises:
        ConfigError: they do not; says how much they need.
    """
    inits = {i.name: i for i in model.graph.initializer}
    widths = {n.input[0]: inits[n.input[1]].dims[0] for n in nodes}
    need = sum(8 * k * k for k in widths.values()) + sum(4 * int(np.prod(i.dims)) for i in model.graph.initializer)
    total = host_memory_bytes()
    if total is not None and need > total:
        raise ConfigError(f"--weight-algo gptq needs about {need / 2**30:.1f} GiB for its Hessians and the "
                          f"calibration graph but this machine has {total / 2**30:.1f} GiB; use --weight-algo rtn")


def quantize_gptq(model: onnx.ModelProto, manifest: Manifest, prompts: Sequence[Sequence[int]],
                  bits_of: Callable[[str], int], group_size: int, accuracy_level: int,
                  num_threads: int = 0) -> onnx.ModelProto:
    """``model``, changed in place: the MatMuls of `linear_matmuls` as MatMulNBits of
    ``bits_of(weight name)`` bits (4 or 8) fitted by `gptq` on ``prompts``; a weight no other
    node reads is removed.

    Raises:
        ConfigError: the Hessians would not fit in memory (`check_memory`).
    """
    nodes = linear_matmuls(model)
    check_memory(model, nodes)
    hessians = collect_hessians(model, manifest, prompts, (n.input[0] for n in nodes), num_threads)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_inits: list[onnx.TensorProto] = []
    seen: set[str] = set()
    for node in nodes:
        weight, bits = node.input[1], bits_of(node.input[1])
        q = gptq(numpy_helper.to_array(inits[weight]), hessians[node.input[0]], bits, group_size)
        name = weight if weight not in seen else f"{weight}_{len(seen)}"  # a weight read by two MatMuls
        seen.add(weight)
        new, tensors = matmul_nbits(node, name, q, bits, accuracy_level)
        new_inits.extend(tensors)
        node.CopyFrom(new)  # in place: the graph's order is kept
    still_read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep_inits = [i for i in graph.initializer if i.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits + new_inits)
    return model

"""Weight-only quantization at export (``--weights int8|int4``): fewer weight bytes per
decode step, which on a CPU is most of a step's memory traffic.

Every linear layer (attention q/k/v/o, MLP gate/up/down, the LM head) is emitted as
``MatMul(x, W^T)`` (`LlamaGraph.matmul_linear`) and rewritten by ONNX Runtime's own
quantizer (`onnxruntime.quantization.matmul_nbits_quantizer`) into ``com.microsoft
MatMulNBits``, one fp32 scale (and, with hqq, zero point) per ``group_size`` input values of
each output column, by symmetric round to nearest (``rtn``, the default) or HQQ (``hqq``,
Half-Quadratic Quantization, fitted without calibration data) or our own GPTQ (``gptq``:
`trtkv.export.gptq`, fitted to calibration activations, asymmetric with integer zero points,
which keep ONNX Runtime's fast kernel). Under int4 the LM head and the attention value
projections stay int8 by default (``head_weights`` / ``v_weights`` "auto", ``--head-weights`` /
``--v-weights``), as llama.cpp's 4-bit mixes keep its output matrix and attn_v at more bits:
they are the layers int4 hurts most. On SmolLM2-135M (RESULTS, "GPTQ int4 and v_proj at int8")
int8 rtn costs +0.1% perplexity at 2.2x the decode speed; int4 rtn +15% (+20% with v_proj at
int4 too); int4 gptq +4.0% at 2.5x; int4 hqq +0.3%, but its fractional zero points send ONNX
Runtime's kernel down a slow path (0.3x; "Weight-only quantization"). An int4 head adds 8% more
perplexity there; ``head_weights="int4"`` quantizes it to int4 too, as ONNX Runtime GenAI's
builder does. Embedding lookups, norms, rotary tables and the trtkv ops stay
as they are. ONNX Runtime's CPU kernel computes with int8-quantized activations
(``accuracy_level`` 4, the default: its fast path) or in fp32 from the dequantized weights
(0: exact, but 5x slower than fp32 weights for int8 on the 2-core dev machine; RESULTS).

TensorRT engines do not take MatMulNBits: `trtkv build` refuses a weight-quantized export
(its Q/DQ lowering is not written yet).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import onnx

from trtkv.errors import ConfigError
from trtkv.manifest import Manifest

WEIGHT_BITS = {"int8": 8, "int4": 4}
#: The LM head's transposed weight, as `LlamaGraph` names it (tied or not).
HEAD_WEIGHTS = ("model.embed_tokens.weight.T", "lm_head.weight.T")
#: How `LlamaGraph` names each layer's transposed attention value projection (ends with).
V_WEIGHT_SUFFIX = ".self_attn.v_proj.weight.T"


def quantize_linear_weights(model: onnx.ModelProto, weights: str, group_size: int,
                            accuracy_level: int = 4, algo: str = "rtn", head_weights: str = "auto",
                            v_weights: str = "auto", manifest: Manifest | None = None,
                            prompts: Sequence[Sequence[int]] = ()) -> onnx.ModelProto:
    """``model`` with its MatMul weights as MatMulNBits (``weights``: int8 or int4).

    ``algo``: ``rtn`` (symmetric round to nearest), ``hqq`` (Half-Quadratic Quantization:
    asymmetric, scale and fractional zero point fitted per group without calibration data;
    needs torch) or ``gptq`` (`trtkv.export.gptq`: fitted to the activations of ``prompts``
    through the graph ``manifest`` describes; integer zero points).
    ``head_weights``, ``v_weights``: the bits of the LM head and of the attention value
    projections: ``auto`` (int8 under int4, else as ``weights``), ``int8`` or ``int4``.

    Raises:
        ConfigError: onnxruntime's quantizer is missing (it needs the ``onnx-ir`` package), or
            hqq without torch.
    """
    bits = WEIGHT_BITS[weights]
    head_bits = WEIGHT_BITS[head_weights] if head_weights != "auto" else min(8, 2 * bits)
    v_bits = WEIGHT_BITS[v_weights] if v_weights != "auto" else min(8, 2 * bits)

    def bits_of(weight: str) -> int:
        if weight in HEAD_WEIGHTS:
            return head_bits
        return v_bits if weight.endswith(V_WEIGHT_SUFFIX) else bits

    if algo == "gptq":
        from trtkv.export.gptq import quantize_gptq

        if manifest is None or not prompts:
            raise ConfigError("--weight-algo gptq needs calibration prompts; the calibration text gave none "
                              "(check --calibration-file)")
        return quantize_gptq(model, manifest, prompts, bits_of, group_size, accuracy_level)
    # MatMul nodes kept at int8 under int4 (the head, v_proj by default)
    eight = [n.name for n in model.graph.node if n.op_type == "MatMul" and bits_of(n.input[1]) == 8]
    try:
        from onnxruntime.quantization import QuantFormat
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            HQQWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    except ImportError as exc:
        raise ConfigError(f"--weights needs onnxruntime's weight quantizer ({exc}); "
                          "pip install onnx-ir (a trtkv dependency)") from None
    if algo == "hqq":
        try:
            import torch  # noqa: F401  (onnxruntime's HQQ runs on torch)
        except ImportError:
            raise ConfigError("--weight-algo hqq needs torch: pip install torch==2.13.0 (the CPU wheel), "
                              "or use --weight-algo rtn") from None

    def run(m: onnx.ModelProto, bits: int, exclude: list[str], include: list[str] | None,
            hqq: bool = False) -> onnx.ModelProto:
        config = (HQQWeightOnlyQuantConfig(block_size=group_size, bits=bits, quant_format=QuantFormat.QOperator,
                                           op_types_to_quantize=("MatMul",)) if hqq else None)  # None: RTN
        quantizer = MatMulNBitsQuantizer(
            m, bits=bits, block_size=group_size, is_symmetric=not hqq, accuracy_level=accuracy_level or None,
            quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",), nodes_to_exclude=exclude,
            nodes_to_include=include, algo_config=config,
        )
        quantizer.process()
        out: Any = quantizer.model.model
        if accuracy_level:  # the HQQ path does not set it on the nodes it makes
            for node in out.graph.node:
                if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
                    node.attribute.append(onnx.helper.make_attribute("accuracy_level", accuracy_level))
        return out

    # The quantizer logs one line per node it skips; keep the export's output readable.
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        if bits == 4 and eight:
            return run(run(model, 4, eight, None, algo == "hqq"), 8, [], eight)
        return run(model, bits, [], None, algo == "hqq")
    finally:
        quiet.setLevel(level)

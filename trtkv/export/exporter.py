"""`trtkv export`: HF checkpoint directory -> model.onnx (+ external weights), manifest, tokenizer.

Runs on the base install: NumPy and ml_dtypes convert the weights; must not import torch.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import helper

from trtkv.atomic_dir import check_output_dir, publish, staging_dir
from trtkv.errors import CheckpointError
from trtkv.export.checkpoint import ArchSpec, WeightReader, arch_spec_from_config, load_hf_config
from trtkv.export.config import CALIBRATION_MAX_TOKENS, CALIBRATION_TEXTS, ExportConfig
from trtkv.export.llama_graph import LlamaGraph
from trtkv.export.rope import inv_freq_from_rope
from trtkv.manifest import ONNX_FILE, Manifest
from trtkv.ops.onnx_functions import op_functions, op_opset_imports
from trtkv.ops.schema import DEFAULT_KV_SCALES

_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json", "generation_config.json",
)


#: Export dtype -> the NumPy dtype weights are rounded to (round to nearest even).
_WEIGHT_DTYPES: dict[str, Any] = {"fp32": np.float32, "fp16": np.float16, "bf16": ml_dtypes.bfloat16}


def _weight_fn(reader: WeightReader, dtype: str) -> Any:
    """name -> the weight in ``dtype``, bf16 as its uint16 bit pattern (the graph's storage)."""
    target = _WEIGHT_DTYPES[dtype]

    def get(name: str) -> np.ndarray:
        w = np.ascontiguousarray(reader.get(name).astype(target))
        return w.view(np.uint16) if dtype == "bf16" else w

    return get


def _check_weights(reader: WeightReader, spec: ArchSpec) -> None:
    required = ["model.embed_tokens.weight", "model.norm.weight"]
    if not spec.tie_word_embeddings:
        required.append("lm_head.weight")
    missing = [n for n in required if not reader.has(n)]
    if missing:
        raise CheckpointError(f"checkpoint in {reader.hf_dir} lacks weights {missing}; it is incomplete")


def export(hf_dir: str | Path, out_dir: str | Path, config: ExportConfig | None = None) -> Manifest:
    """Export a Llama-family checkpoint to ``out_dir``.

    Args:
        hf_dir: HF checkpoint directory (config.json, *.safetensors, tokenizer files).
        out_dir: created if needed; receives model.onnx, manifest.json, tokenizer files.
        config: export options.

    Returns:
        The manifest written to ``out_dir``.

    Raises:
        CheckpointError: missing/corrupt checkpoint or unsupported architecture.
        ConfigError: invalid options.
    """
    config = config or ExportConfig()
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    hf_config = load_hf_config(hf_dir)
    spec = arch_spec_from_config(hf_config, hf_dir)
    _check_tokenizer(hf_dir)
    check_output_dir(out_dir, source=hf_dir, what="the checkpoint")
    final_dir, out_dir = out_dir, staging_dir(out_dir)
    try:
        manifest = _export_into(hf_dir, out_dir, config, spec)
        publish(out_dir, final_dir)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return manifest


def _export_into(hf_dir: Path, out_dir: Path, config: ExportConfig, spec: Any) -> Manifest:
    """Write the export into ``out_dir`` (a fresh staging directory)."""
    kv_dtype = config.resolved_kv_dtype
    inv_freq, attention_scaling = inv_freq_from_rope(spec.rope, spec.head_dim, spec.max_position_embeddings)
    default_scale = np.full(1, DEFAULT_KV_SCALES.get(kv_dtype, 1.0), np.float32)
    kv_scales = [(default_scale, default_scale) for _ in range(spec.num_layers)]
    with WeightReader(hf_dir) as reader:
        _check_weights(reader, spec)
        graph_builder = LlamaGraph(spec, config.dtype, kv_dtype, _weight_fn(reader, config.dtype),
                                   matmul_linear=config.weights != "none")
        graph = graph_builder.build(inv_freq, attention_scaling, kv_scales, _progress(config, spec))
    model = helper.make_model(graph, opset_imports=op_opset_imports(), functions=op_functions(kv_dtype),
                              producer_name="trtkv")
    model.ir_version = 10
    manifest = Manifest(
        architecture=spec.model_type, num_layers=spec.num_layers, hidden_size=spec.hidden_size,
        num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
        vocab_size=spec.vocab_size, max_position_embeddings=spec.max_position_embeddings,
        dtype=config.dtype, kv_dtype=kv_dtype,
        k_scales=tuple(tuple(float(x) for x in k) for k, _ in kv_scales),
        v_scales=tuple(tuple(float(x) for x in v) for _, v in kv_scales),
        block_size=config.block_size, sliding_windows=spec.sliding_windows,
        eos_token_ids=spec.eos_token_ids, bos_token_id=spec.bos_token_id, rope=spec.rope,
        tie_word_embeddings=spec.tie_word_embeddings, source=str(hf_dir.resolve()),
        weights=config.weights, weight_group_size=config.weight_group_size if config.weights != "none" else 0,
        kv_scale_mode="dynamic" if config.kv_scales == "dynamic" else "static",
    )
    if config.weights != "none":
        model, manifest = _quantize_weights(model, manifest, hf_dir, config)
    _save_onnx(model, out_dir, config.external_data_min_mib)
    manifest.save(out_dir)
    _copy_tokenizer(hf_dir, out_dir)
    if config.calibrates_kv:
        from trtkv.export.calibrate import calibrate

        manifest = calibrate(out_dir, config.calibrate or CALIBRATION_TEXTS, config.kv_scales,
                             calibration_file=config.calibration_file or None)
    return manifest


def _quantize_weights(model: onnx.ModelProto, manifest: Manifest, hf_dir: Path,
                      config: ExportConfig) -> tuple[onnx.ModelProto, Manifest]:
    """``--weights``: the linear layers as MatMulNBits; gptq calibrates on the export's own
    graph first (prompts as for KV scales: ``--calibration-file``, else stdlib sources)."""
    from trtkv.export.weights import quantize_linear_weights

    prompts: list[list[int]] = []
    stats: dict[str, Any] = {}
    if config.weight_algo == "gptq":
        from trtkv.export.calibrate import calibration_prompts

        prompts, source = calibration_prompts(hf_dir, config.calibrate or CALIBRATION_TEXTS,
                                              min(CALIBRATION_MAX_TOKENS, manifest.max_position_embeddings),
                                              config.calibration_file or None)
        stats = {"algorithm": "gptq", "source": source, "num_samples": len(prompts),
                 "num_tokens": sum(map(len, prompts))}
    start = time.perf_counter()
    model = quantize_linear_weights(model, config.weights, config.weight_group_size, config.weight_accuracy_level,
                                    config.weight_algo, config.head_weights, config.v_weights,
                                    manifest, prompts)
    if stats:
        stats["seconds"] = round(time.perf_counter() - start, 1)
        manifest = replace(manifest, weight_calibration=stats)
    return model, manifest


def _check_tokenizer(hf_dir: Path) -> None:
    """A tokenizer.json that does not load fails the export, not a later generate."""
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        return
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception subclass for bad files
        raise CheckpointError(f"{path} cannot be loaded ({str(exc).splitlines()[0][:160]}); fix or remove it") from exc


def _progress(config: ExportConfig, spec: ArchSpec) -> Any:
    if not config.progress:
        return iter
    from trtkv.progress import track

    return lambda it: track(it, spec.num_layers, "export layers")


def _save_onnx(model: onnx.ModelProto, out_dir: Path, external_min_mib: float) -> None:
    path = out_dir / ONNX_FILE
    data_name = ONNX_FILE + ".data"
    (out_dir / data_name).unlink(missing_ok=True)
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    if total > external_min_mib * 2**20:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def _copy_tokenizer(hf_dir: Path, out_dir: Path) -> None:
    for name in _TOKENIZER_FILES:
        if (hf_dir / name).is_file():
            shutil.copy2(hf_dir / name, out_dir / name)

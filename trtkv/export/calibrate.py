"""Static KV scales for fp8/int8 pools, calibrated on text.

Runs the exported graph on ONNX Runtime with a float32 pool over calibration prompts, takes
the absolute maximum of every layer's K and V (per tensor, or per KV head), and sets
``scale = amax / qmax`` (qmax = 448 for fp8 E4M3, 127 for int8), so the largest value seen
maps to the largest code. The scales are written to the manifest and to the graph's
``k_scale.{i}`` / ``v_scale.{i}`` initializers (TensorRT reads them from there).

Calibration text is the user's (``--calibration-file``: plain text, cut into prompts of
``max_tokens``, or JSONL, one ``{"messages": [...]}`` chat rendered by the model's chat
template or one ``{"text": ...}`` per line), or by default Python standard-library sources
outside the built-in model's held-out set (so accuracy measured on held-out text is not
calibrated on itself). What was measured, and how much of K/V the documented default scales
would have saturated, is recorded in the manifest's ``kv_calibration``.
"""

from __future__ import annotations

import json
import sysconfig
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from trtkv.errors import ConfigError, ModelDirError
from trtkv.manifest import Manifest
from trtkv.ops.schema import DEFAULT_KV_SCALES, KV_DTYPE_SPECS, QUANTIZED_KV_DTYPES, ceil_div

SCALE_GRANULARITIES = ("per-tensor", "per-head")


def calibration_texts(num_texts: int, max_chars: int = 4000) -> list[str]:
    """``num_texts`` stdlib source snippets, deterministic, disjoint from the held-out set."""
    from trtkv.models import heldout_files

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    held = set(heldout_files())
    files = sorted(p for p in stdlib.glob("*.py") if p.name not in held)  # top level: name == stdlib path
    texts = []
    for path in files[: num_texts]:
        texts.append(path.read_text(encoding="utf-8", errors="replace")[:max_chars])
    return texts


def file_prompts(tokenizer: Any, path: str | Path, max_tokens: int) -> list[list[int]]:
    """Calibration prompts from a user's file: plain text cut into ``max_tokens`` pieces, or
    JSONL (``.jsonl``) with one ``{"messages": [...]}`` or ``{"text": ...}`` per line.

    Raises:
        ConfigError: unreadable file, a bad JSONL line (its number is named), no text.
    """
    from trtkv.runtime.chat import render_chat

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--calibration-file {path}: cannot read it as UTF-8 text ({exc})") from None
    if not text.strip():
        raise ConfigError(f"--calibration-file {path} holds no text")
    prompts: list[list[int]] = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"--calibration-file {path} line {number} is not JSON ({exc})") from None
            if isinstance(item, dict) and isinstance(item.get("messages"), list):
                ids = render_chat(tokenizer, item["messages"], add_generation_prompt=False)
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                ids = list(tokenizer.encode(item["text"]))
            else:
                raise ConfigError(f'--calibration-file {path} line {number}: want {{"messages": [...]}} '
                                  'or {"text": "..."}')
            prompts.append(ids[:max_tokens])
    else:
        ids = list(tokenizer.encode(text))
        prompts = [ids[i:i + max_tokens] for i in range(0, len(ids), max_tokens)]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ConfigError(f"--calibration-file {path} holds no text")
    return prompts


def calibration_prompts(tokenizer_dir: Path, num_texts: int, max_tokens: int,
                        calibration_file: str | Path | None = None,
                        texts: list[str] | None = None) -> tuple[list[list[int]], str]:
    """The first ``num_texts`` calibration prompts of at most ``max_tokens`` tokens, encoded
    with the tokenizer in ``tokenizer_dir``, and a name for their source: the user's file
    (`file_prompts`), else ``texts``, else stdlib sources (`calibration_texts`).

    Raises:
        ModelDirError: no tokenizer in ``tokenizer_dir``.
        ConfigError: a bad calibration file.
    """
    from trtkv.runtime.engine import load_tokenizer

    tokenizer = load_tokenizer(Path(tokenizer_dir))
    if tokenizer is None:
        raise ModelDirError(f"{tokenizer_dir} has no tokenizer; calibration encodes text with it")
    if calibration_file is not None:
        return file_prompts(tokenizer, calibration_file, max_tokens)[:num_texts], f"file {Path(calibration_file).name}"
    prompts = [tokenizer.encode(t, truncation=True, max_length=max_tokens) for t in (texts or calibration_texts(num_texts))]
    return [p for p in prompts if p], "texts" if texts else "python stdlib sources"


def collect_kv_amax(model_dir: str | Path, prompts: list[list[int]], per_head: bool,
                    saturation_at: float = 0.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Per layer amax of K and V over ``prompts``: arrays [L, Hkv] (per head) or [L, 1], and
    the share of K/V values whose magnitude exceeds ``saturation_at`` (0: not counted)."""
    from trtkv.runtime.backends.base import BackendConfig
    from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from trtkv.runtime.plan import ScheduledSeq, StepPlan

    manifest = Manifest.load(model_dir)
    block_size = manifest.block_size
    longest = max(len(p) for p in prompts)
    num_blocks = ceil_div(longest, block_size)
    backend = OnnxRuntimeBackend(model_dir, manifest, BackendConfig(kv_dtype="fp32", num_blocks=num_blocks))
    width = manifest.num_kv_heads if per_head else 1
    k_amax = np.zeros((manifest.num_layers, width), np.float32)
    v_amax = np.zeros_like(k_amax)
    axes = (0, 1, 3) if per_head else (0, 1, 2, 3)  # pool[N, B, Hkv, D] per K or V
    num_over = num_values = 0
    for prompt in prompts:
        for pool in backend.pools:
            pool.fill(0.0)
        backend.execute(StepPlan(seqs=(ScheduledSeq(0, tuple(prompt), 0, tuple(range(num_blocks)), True),)))
        for i, pool in enumerate(backend.pools):
            k_amax[i] = np.maximum(k_amax[i], np.abs(pool[:, 0]).max(axis=axes).reshape(-1))
            v_amax[i] = np.maximum(v_amax[i], np.abs(pool[:, 1]).max(axis=axes).reshape(-1))
            if saturation_at:
                num_over += int((np.abs(pool) > saturation_at).sum())  # unwritten slots are 0
                num_values += 2 * len(prompt) * manifest.num_kv_heads * manifest.head_dim
    return k_amax, v_amax, num_over / num_values if num_values else 0.0


def scales_from_amax(amax: np.ndarray, kv_dtype: str) -> np.ndarray:
    qmax = KV_DTYPE_SPECS[kv_dtype].code_max
    return np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)


def calibrate(model_dir: str | Path, num_texts: int = 16, granularity: str = "per-head",
              texts: list[str] | None = None, max_tokens: int = 512,
              calibration_file: str | Path | None = None) -> Manifest:
    """Calibrate an exported fp8/int8 model in place; returns the updated manifest.

    ``calibration_file``: the user's text (see `file_prompts`), of which the first
    ``num_texts`` prompts are used; default: ``texts``, or ``num_texts`` stdlib sources.

    Raises:
        ConfigError: the model's KV dtype is not quantized, or bad arguments.
        ModelDirError: no tokenizer to encode the calibration text.
    """
    model_dir = Path(model_dir)
    manifest = Manifest.load(model_dir)
    if manifest.kv_dtype not in QUANTIZED_KV_DTYPES:
        raise ConfigError(f"{model_dir} has a {manifest.kv_dtype} KV pool; calibration is for fp8/int8 "
                          "(export with --kv-dtype fp8 or int8)")
    if manifest.dynamic_kv_scales:
        raise ConfigError(f"{model_dir} has dynamic KV scales (one per token, computed on write): there is nothing "
                          "to calibrate")
    if granularity not in SCALE_GRANULARITIES:
        raise ConfigError(f"--kv-scales must be one of {', '.join(SCALE_GRANULARITIES)}, got {granularity!r}")
    if num_texts < 1:
        raise ConfigError(f"--calibrate wants a number of texts >= 1, got {num_texts}")
    limit = min(max_tokens, manifest.max_position_embeddings)
    prompts, source = calibration_prompts(model_dir, num_texts, limit, calibration_file, texts)
    # A quarter of the samples (at least one, when there are two or more) is held out to
    # measure what the scales cost: perplexity with them against a float32 pool.
    num_held = max(1, len(prompts) // 4) if len(prompts) >= 2 else 0
    fit, held = (prompts[:-num_held], prompts[-num_held:]) if num_held else (prompts, prompts)
    qmax = KV_DTYPE_SPECS[manifest.kv_dtype].code_max
    limit_at_default = qmax * DEFAULT_KV_SCALES[manifest.kv_dtype]
    k_amax, v_amax, saturated = collect_kv_amax(model_dir, fit, granularity == "per-head", limit_at_default)
    k, v = scales_from_amax(k_amax, manifest.kv_dtype), scales_from_amax(v_amax, manifest.kv_dtype)
    updated = replace(manifest, k_scales=_tuples(k), v_scales=_tuples(v))
    base_ppl, ppl = _heldout_perplexity(model_dir, manifest.with_kv("fp32"), updated, held)
    stats = {"source": source, "num_samples": len(fit), "num_tokens": sum(map(len, fit)),
             "granularity": granularity, "amax": float(max(k_amax.max(), v_amax.max())),
             "saturated_at_default_scales": saturated, "num_heldout_samples": num_held,
             "heldout_perplexity_fp32_kv": base_ppl, "heldout_perplexity": ppl,
             "perplexity_change_pct": (ppl / base_ppl - 1) * 100}
    updated = replace(updated, kv_calibration=stats)
    write_scales(model_dir, updated)
    return updated


def _heldout_perplexity(model_dir: Path, base: Manifest, quantized: Manifest,
                        prompts: list[list[int]]) -> tuple[float, float]:
    """Perplexity of ``prompts`` through a float32 pool and through the calibrated pool."""
    from trtkv.eval_kv import perplexity
    from trtkv.runtime.backends.base import BackendConfig
    from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    num_blocks = ceil_div(max(map(len, prompts)), base.block_size)
    windows = [p for p in prompts if len(p) >= 2] or [prompts[0] * 2]
    return tuple(perplexity(OnnxRuntimeBackend(model_dir, m, BackendConfig(num_blocks=num_blocks)), windows, 64)
                 for m in (base, quantized))  # type: ignore[return-value]


def _tuples(scales: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in scales)


def write_scales(model_dir: Path, manifest: Manifest) -> None:
    """Store the manifest's scales in manifest.json and in model.onnx's scale initializers."""
    path = model_dir / manifest.onnx_file
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelDirError(f"cannot read {path} ({exc})") from exc
    values: dict[str, Any] = {f"k_scale.{i}": s for i, s in enumerate(manifest.k_scales)}
    values.update({f"v_scale.{i}": s for i, s in enumerate(manifest.v_scales)})
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(np.asarray(values[init.name], np.float32), init.name))
    onnx.save_model(model, str(path))  # external weights (if any) keep their file and offsets
    manifest.save(model_dir)

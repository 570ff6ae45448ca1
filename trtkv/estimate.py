"""`trtkv estimate`: how much KV cache a model needs, and what fits in a memory budget.

Works from an exported directory (its manifest) or a Hugging Face checkpoint directory (its
config.json, the fields it gives itself: nothing guessed). Pure arithmetic over the paged
layout ``[num_blocks, 2, block_size, num_kv_heads, head_dim]`` per layer; imports nothing heavy.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from trtkv.errors import ConfigError, ModelDirError
from trtkv.ops.schema import KV_DTYPE_SPECS, KV_DTYPES, ceil_div

_TORCH_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class ModelDims:
    """What the KV size depends on."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    kv_dtype: str
    """The export's KV dtype, or the checkpoint's weight dtype."""


@dataclass(frozen=True)
class Estimate:
    """What fits in ``memory_gib`` of KV pool (see `estimate`)."""

    kv_dtype: str
    kv_bytes_per_token: int
    block_size: int
    num_blocks: int
    num_tokens: int
    seq_len: int
    num_seqs: int
    """Sequences of ``seq_len`` tokens that fit at once (each holds whole blocks)."""
    longest_context: int
    """The longest single sequence that fits (capped by the model's max_position_embeddings)."""


def read_dims(model: str | Path) -> ModelDims:
    """Dims of an exported directory or an HF checkpoint directory.

    Raises:
        ModelDirError: neither a manifest nor a usable config.json is there.
    """
    path = Path(model)
    if (path / "manifest.json").is_file():
        from trtkv.manifest import Manifest

        m = Manifest.load(path, require_onnx=False)
        return ModelDims(m.num_layers, m.num_kv_heads, m.head_dim, m.max_position_embeddings, m.kv_dtype)
    config = path / "config.json"
    if not config.is_file():
        raise ModelDirError(f"{path} has neither manifest.json (a trtkv export) nor config.json (a Hugging Face "
                            "checkpoint); pass one of those directories")
    from trtkv.export.checkpoint import read_config_json

    raw = read_config_json(config)
    raw = raw.get("text_config", raw) if "num_hidden_layers" not in raw else raw
    missing = [k for k in ("num_hidden_layers", "num_attention_heads", "hidden_size", "max_position_embeddings")
               if not isinstance(raw.get(k), int) or raw.get(k, 0) < 1]
    if missing:
        raise ModelDirError(f"{config} lacks (or has a bad) {', '.join(missing)}")
    heads = raw["num_attention_heads"]
    kv_heads = raw.get("num_key_value_heads") or heads
    head_dim = raw.get("head_dim") or raw["hidden_size"] // heads
    dtype = _TORCH_DTYPES.get(str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"), "bf16")
    return ModelDims(raw["num_hidden_layers"], int(kv_heads), int(head_dim), raw["max_position_embeddings"], dtype)


def estimate(dims: ModelDims, *, memory_gib: float, kv_dtype: str = "auto", block_size: int = 16,
             seq_len: int = 0) -> Estimate:
    """What a KV pool of ``memory_gib`` holds for this model.

    Args:
        dims: from `read_dims`.
        memory_gib: the KV pool's memory (the rest of the GPU or host memory goes to weights
            and activations: give only what the pool may use).
        kv_dtype: auto (the model's), or fp32 / fp16 / bf16 / fp8 / int8.
        block_size: tokens per KV block.
        seq_len: sequence length for the "how many sequences" answer; 0 = the model's maximum.

    Raises:
        ConfigError: an option is out of range.
    """
    if not (math.isfinite(memory_gib) and memory_gib > 0):
        raise ConfigError(f"--memory-gib must be a finite number > 0, got {memory_gib}")
    if kv_dtype != "auto" and kv_dtype not in KV_DTYPES:
        raise ConfigError(f"--kv-dtype must be auto or one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}")
    if block_size < 1 or block_size & (block_size - 1):
        raise ConfigError(f"--block-size must be a power of two, got {block_size}")
    if seq_len < 0:
        raise ConfigError(f"--seq-len must be >= 0, got {seq_len}")
    kv = dims.kv_dtype if kv_dtype == "auto" else kv_dtype
    per_token = 2 * dims.num_layers * dims.num_kv_heads * dims.head_dim * KV_DTYPE_SPECS[kv].itemsize
    num_blocks = int(memory_gib * 2**30) // (per_token * block_size)
    num_tokens = num_blocks * block_size
    seq_len = seq_len or dims.max_position_embeddings
    blocks_per_seq = ceil_div(seq_len, block_size)
    return Estimate(kv, per_token, block_size, num_blocks, num_tokens, seq_len, num_blocks // blocks_per_seq,
                    min(num_tokens, dims.max_position_embeddings))


def format_estimate(e: Estimate, memory_gib: float) -> str:
    """The lines `trtkv estimate` prints."""
    return "\n".join([
        f"KV dtype {e.kv_dtype}: {e.kv_bytes_per_token:,} bytes per token ({e.kv_bytes_per_token / 1024:.1f} KiB)",
        f"{memory_gib:g} GiB of KV pool: {e.num_blocks:,} blocks of {e.block_size} = {e.num_tokens:,} tokens",
        f"sequences of {e.seq_len:,} tokens at once: {e.num_seqs:,}",
        f"longest context that fits: {e.longest_context:,} tokens",
    ])


def as_json(e: Estimate) -> str:
    return json.dumps(asdict(e))

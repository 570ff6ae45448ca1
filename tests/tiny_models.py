"""Tiny random-weight Hugging Face checkpoints made on the fly (no downloads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: One config per family, varying GQA ratio, head_dim (incl. non-powers of two), tied
#: embeddings, rope scaling, qkv bias, q/k norm and sliding window.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": dict(
        model_type="llama", hidden_size=96, num_attention_heads=4, num_key_value_heads=2,
        head_dim=48, intermediate_size=160, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    ),
    "llama_tied_mqa": dict(
        model_type="llama", hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, intermediate_size=128, tie_word_embeddings=True,
    ),
    "mistral": dict(
        model_type="mistral", hidden_size=80, num_attention_heads=2, num_key_value_heads=1,
        head_dim=80, intermediate_size=128, sliding_window=64, tie_word_embeddings=False,
    ),
    "qwen2": dict(
        model_type="qwen2", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, tie_word_embeddings=True, use_sliding_window=False,
    ),
    "qwen3": dict(
        model_type="qwen3", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, intermediate_size=128, tie_word_embeddings=False,
    ),
}


def make_checkpoint(out_dir: Path, family: str, *, vocab_size: int = 320, num_layers: int = 2,
                    max_positions: int = 512, seed: int = 0, dtype: str = "float32",
                    **overrides: Any) -> Path:
    """Save a random-weight model of ``family`` (a key of FAMILIES) to ``out_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(FAMILIES[family])
    model_type = spec.pop("model_type")
    spec.update(overrides)
    config = AutoConfig.for_model(
        model_type, vocab_size=vocab_size, num_hidden_layers=num_layers,
        max_position_embeddings=max_positions, initializer_range=0.2, rms_norm_eps=1e-6,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, **spec,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.to(getattr(torch, dtype)).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir

"""NumPy RoPE tables (trtkv.export.rope) against transformers' own rotary embeddings (torch)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoConfig

from tests.tiny_models import FAMILIES
from trtkv.export.checkpoint import arch_spec_from_config
from trtkv.export.rope import inv_freq_from_rope

_CLASS = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}

#: Beyond the test families: each rope type at sizes and thetas of real checkpoints.
_EXTRA: dict[str, dict[str, Any]] = {
    "llama3_128": dict(model_type="llama", hidden_size=256, num_attention_heads=2, head_dim=128,
                       rope_theta=500000.0,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "linear": dict(model_type="llama", hidden_size=128, num_attention_heads=2, rope_theta=10000.0,
                   rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "yarn": dict(model_type="qwen2", hidden_size=256, num_attention_heads=2, num_key_value_heads=2, rope_theta=1000000.0,
                 rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}),
    "yarn_mscale": dict(model_type="llama", hidden_size=192, num_attention_heads=2, head_dim=96,
                        rope_scaling={"rope_type": "yarn", "factor": 16.0, "mscale": 1.0,
                                      "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2,
                                      "original_max_position_embeddings": 256}),
    "qwen3_theta": dict(model_type="qwen3", hidden_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                        rope_theta=1000000.0),
}


def _hf_rope(config: Any) -> tuple[np.ndarray, float]:
    mt = config.model_type
    module = importlib.import_module(f"transformers.models.{mt}.modeling_{mt}")
    rotary = getattr(module, f"{_CLASS[mt]}RotaryEmbedding")(config=config)
    return rotary.inv_freq.float().numpy(), float(rotary.attention_scaling)


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64)).max())


@pytest.mark.parametrize("name", [*FAMILIES, *_EXTRA])
def test_inv_freq_matches_transformers(name: str) -> None:
    spec_kw = dict(FAMILIES.get(name) or _EXTRA[name])
    config = AutoConfig.for_model(spec_kw.pop("model_type"), num_hidden_layers=1,
                                  max_position_embeddings=512, **spec_kw)
    spec = arch_spec_from_config(config, Path("."))
    inv_freq, scaling = inv_freq_from_rope(spec.rope, spec.head_dim, spec.max_position_embeddings)
    ref, ref_scaling = _hf_rope(config)
    assert inv_freq.dtype == np.float32 and inv_freq.shape == ref.shape
    assert scaling == ref_scaling
    # Every step is torch's float32 arithmetic; only float32 pow may round one ulp apart (torch's
    # vectorized pow is not correctly rounded and varies by CPU; ours is).
    assert _ulps(inv_freq, ref) <= 1, (inv_freq, ref)


def test_built_in_model_tables_equal_transformers_bit_for_bit() -> None:
    hf_dir = Path(__file__).resolve().parents[2] / "trtkv" / "models" / "tiny-stdlib"
    config = AutoConfig.from_pretrained(str(hf_dir))
    spec = arch_spec_from_config(config, hf_dir)
    inv_freq, _ = inv_freq_from_rope(spec.rope, spec.head_dim, spec.max_position_embeddings)
    assert np.array_equal(inv_freq.view(np.uint32), _hf_rope(config)[0].view(np.uint32))

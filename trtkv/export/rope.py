"""RoPE inverse frequencies in NumPy, the formulas of transformers' ``modeling_rope_utils``.

Owns ``inv_freq`` and the attention scaling of the rope types `trtkv export` supports
(default, linear, llama3, yarn). Every step is float32 in the order transformers' torch code
runs it (``scalar / tensor`` is ``reciprocal(tensor) * scalar`` there), so the tables match
it bit for bit; the one exception is ``base ** x``, computed here in float64 and rounded once
(torch's vectorized float32 pow can differ from that by one ulp in some entries, and differs
between CPUs). Must not import torch or transformers' modeling code: export runs without torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_F32 = np.float32


def inv_freq_from_rope(rope: dict[str, Any], head_dim: int, max_position_embeddings: int) -> tuple[np.ndarray, float]:
    """inv_freq and attention scaling for one checkpoint's rope settings.

    Args:
        rope: ``ArchSpec.rope``: ``rope_type``, ``rope_theta`` and the config's ``parameters``.
        head_dim: dimension of one attention head.
        max_position_embeddings: the config's ``max_position_embeddings`` (yarn without a factor).

    Returns:
        ``inv_freq`` float32 [rotary_dim / 2] and the float scaling of cos/sin.
    """
    params = rope["parameters"]
    rope_type = rope["rope_type"]
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    pos_freqs = _pow(rope["rope_theta"], np.arange(0, dim, 2).astype(_F32) / _F32(dim))
    if rope_type == "yarn":
        return _yarn(params, pos_freqs, dim, rope["rope_theta"], max_position_embeddings)
    inv_freq = _reciprocal(pos_freqs)
    if rope_type == "linear":
        return inv_freq / _F32(params["factor"]), 1.0
    if rope_type == "llama3":
        return _llama3(params, inv_freq), 1.0
    return inv_freq, 1.0


def _pow(base: float, exponents: np.ndarray) -> np.ndarray:
    """float32 ``base ** exponents`` (torch casts the base to float32 first)."""
    b = float(_F32(base))
    return np.array([math.pow(b, float(e)) for e in exponents], dtype=np.float64).astype(_F32)


def _reciprocal(x: np.ndarray) -> np.ndarray:
    return (_F32(1.0) / x).astype(_F32)


def _llama3(params: dict[str, Any], inv_freq: np.ndarray) -> np.ndarray:
    factor = _F32(params["factor"])
    low_freq_factor, high_freq_factor = params["low_freq_factor"], params["high_freq_factor"]
    old_context_len = params["original_max_position_embeddings"]
    low_freq_wavelen = _F32(old_context_len / low_freq_factor)
    high_freq_wavelen = _F32(old_context_len / high_freq_factor)
    wavelen = _reciprocal(inv_freq) * _F32(2 * math.pi)
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (_reciprocal(wavelen) * _F32(old_context_len) - _F32(low_freq_factor)) / _F32(
        high_freq_factor - low_freq_factor)
    smoothed = (_F32(1) - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, inv_freq_llama).astype(_F32)


def _yarn(params: dict[str, Any], pos_freqs: np.ndarray, dim: int, base: float,
          max_position_embeddings: int) -> tuple[np.ndarray, float]:
    factor = params.get("factor")
    original_max = params["original_max_position_embeddings"]
    if factor is None:
        factor = max_position_embeddings / original_max

    def get_mscale(scale: float, mscale: float = 1) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=_F32) - _F32(low)) / _F32(high - low), 0, 1).astype(_F32)
    extrapolation_factor = _F32(1) - ramp
    inv_freq_extrapolation = _reciprocal(pos_freqs)
    inv_freq_interpolation = _reciprocal(_F32(factor) * pos_freqs)
    inv_freq = (inv_freq_interpolation * (_F32(1) - extrapolation_factor)
                + inv_freq_extrapolation * extrapolation_factor)
    return inv_freq.astype(_F32), float(attention_factor)

"""The benchmark workload: prompts as random token ids, output lengths, arrival times.

Everything is drawn from numpy generators seeded by `BenchConfig.seed`, so one seed gives the
same requests against any target. Prompts and arrivals use separate streams: changing the
request rate does not change the prompts. Must not import the runtime or HTTP code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from trtkv.bench.config import BenchConfig
from trtkv.errors import ConfigError


@dataclass(frozen=True)
class RequestSpec:
    """One request to send.

    Attributes:
        index: position in the workload, 0 .. num_requests - 1.
        prompt_ids: the prompt's token ids.
        output_len: output tokens to ask for (EOS ignored, so exactly this many).
    """

    index: int
    prompt_ids: tuple[int, ...]
    output_len: int


def create_workload(config: BenchConfig, vocab_size: int, max_model_len: int = 0) -> list[RequestSpec]:
    """The ``config.num_requests`` requests of the benchmark.

    Args:
        config: workload options (lengths, shared prefix, seed).
        vocab_size: prompt ids are drawn uniformly from ``[0, vocab_size)``.
        max_model_len: the target's context length; 0 = unknown (not checked).

    Raises:
        ConfigError: the longest prompt + output cannot fit ``max_model_len``.
    """
    longest = config.max_prompt_len + config.max_output_len
    if max_model_len and longest > max_model_len:
        raise ConfigError(
            f"the longest request ({config.max_prompt_len} prompt + {config.max_output_len} "
            f"output tokens) exceeds the model's context of {max_model_len}; lower --prompt-len, "
            "--output-len or --random-range-ratio"
        )
    rng = np.random.default_rng([config.seed, 0])
    prompt_lens = _lengths(rng, config.prompt_len, config.random_range_ratio, config.num_requests)
    output_lens = _lengths(rng, config.output_len, config.random_range_ratio, config.num_requests)
    prefix = rng.integers(0, vocab_size, config.shared_prefix_len).tolist()
    specs = []
    for i, (plen, olen) in enumerate(zip(prompt_lens, output_lens, strict=True)):
        tail = rng.integers(0, vocab_size, plen - len(prefix)).tolist()
        specs.append(RequestSpec(i, tuple(prefix + tail), olen))
    return specs


def arrival_times(num_requests: int, request_rate: float, seed: int) -> list[float]:
    """Seconds after the start at which each request is sent: a Poisson process of
    ``request_rate`` requests/s (exponential gaps; the first at 0), or all at 0 for inf."""
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = np.random.default_rng([seed, 1])
    gaps = rng.exponential(1.0 / request_rate, num_requests)
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


def _lengths(rng: np.random.Generator, mean: int, ratio: float, n: int) -> list[int]:
    low = max(1, math.floor(mean * (1.0 - ratio)))
    high = math.ceil(mean * (1.0 + ratio))
    return rng.integers(low, high + 1, n).tolist()

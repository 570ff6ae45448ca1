"""Benchmark options: one frozen dataclass whose field help is the `trtkv bench` option help."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trtkv.errors import ConfigError


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class BenchConfig:
    """What to drive (a server or a model dir), the workload, and where to write results."""

    url: str = _opt("", "base URL of a running `trtkv serve`, e.g. http://127.0.0.1:8000")
    api_key: str = _opt("", "API key sent as 'Authorization: Bearer KEY' (server mode)")
    model_name: str = _opt("", "model id to request; empty = the first one GET /v1/models lists")
    model_dir: str = _opt("", "exported model dir to run in-process instead of --url "
                          "(engine options below apply)")
    num_requests: int = _opt(64, "requests to send")
    prompt_len: int = _opt(128, "prompt tokens per request (mean, with --random-range-ratio)")
    output_len: int = _opt(64, "output tokens per request (mean, with --random-range-ratio); "
                           "EOS is ignored so each output has exactly this many")
    random_range_ratio: float = _opt(0.0, "draw lengths uniformly from [L*(1-r), L*(1+r)]; 0 = fixed")
    shared_prefix_len: int = _opt(0, "first N prompt tokens shared by every prompt (counted "
                                  "in --prompt-len), for prefix-cache benchmarks")
    request_rate: float = _opt(math.inf, "Poisson arrival rate in requests/s; inf = all at once")
    concurrency: int = _opt(0, "most requests in flight at once; 0 = no cap")
    vocab_size: int = _opt(0, "prompt ids are drawn from [0, N); 0 = the model's vocabulary "
                           "when known (in-process; a server reporting vocab_size), else 256")
    seed: int = _opt(0, "seed of prompts, lengths and arrival times")
    timeout_s: float = _opt(600.0, "seconds one request may wait between stream chunks (server mode)")
    output_json: str = _opt("", "write the summary and per-request records here (JSON)")
    output_png: str = _opt("", "write the latency-distribution and throughput plot here (PNG)")
    progress: bool = _opt(True, "show a progress bar on stderr")

    def __post_init__(self) -> None:
        if bool(self.url) == bool(self.model_dir):
            raise ConfigError("give exactly one target: --url http://HOST:PORT of a running "
                              "`trtkv serve`, or --model-dir DIR to run the engine in-process")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--url must start with http:// or https://, got {self.url!r}")
        for name in ("num_requests", "prompt_len", "output_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("shared_prefix_len", "concurrency", "vocab_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.random_range_ratio < 1.0:
            raise ConfigError(f"--random-range-ratio must be in [0, 1), got {self.random_range_ratio}")
        if not self.request_rate > 0:  # also refuses nan
            raise ConfigError(f"--request-rate must be > 0 (inf = all at once), got {self.request_rate}")
        if self.shared_prefix_len >= self.min_prompt_len:
            raise ConfigError(
                f"--shared-prefix-len {self.shared_prefix_len} leaves no distinct tokens in the "
                f"shortest prompt ({self.min_prompt_len}); make it smaller than that"
            )
        if not self.timeout_s > 0:
            raise ConfigError(f"--timeout-s must be > 0, got {self.timeout_s}")

    @property
    def min_prompt_len(self) -> int:
        return max(1, math.floor(self.prompt_len * (1.0 - self.random_range_ratio)))

    @property
    def max_prompt_len(self) -> int:
        return math.ceil(self.prompt_len * (1.0 + self.random_range_ratio))

    @property
    def max_output_len(self) -> int:
        return math.ceil(self.output_len * (1.0 + self.random_range_ratio))


def _flag(name: str) -> str:
    return name.replace("_", "-")

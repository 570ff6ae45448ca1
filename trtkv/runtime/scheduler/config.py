"""The scheduler's configuration: one frozen dataclass whose field help feeds the CLI.

Each field carries its one-line help twice: as the attribute docstring (for readers) and in
``metadata["help"]`` (for the CLI, via `field_help`). Must not import torch or tensorrt.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from trtkv.errors import ConfigError
from trtkv.runtime.scheduler.policy import POLICIES, PolicyName

PreemptionMode = Literal["recompute", "swap"]


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """How the scheduler batches requests (continuous batching over a paged KV cache)."""

    max_model_len: int = _help("Longest sequence (prompt + generated tokens) a request may reach.")
    """Longest sequence (prompt + generated tokens) a request may reach."""
    max_num_seqs: int = _help("Most sequences running at once, and so in one step.", default=64)
    """Most sequences running at once, and so in one step."""
    max_num_batched_tokens: int = _help("Most tokens computed in one step.", default=2048)
    """Most tokens computed in one step."""
    max_num_queued_requests: int = _help(
        "Most waiting requests; more are rejected with reason 'queue_full'.", default=1024
    )
    """Most waiting requests; more are rejected with reason 'queue_full'."""
    enable_chunked_prefill: bool = _help(
        "Split long prompts across steps so decodes keep running.", default=True
    )
    """Split long prompts across steps so decodes keep running."""
    preemption_mode: PreemptionMode = _help(
        "How to evict a running sequence when KV blocks run out: 'recompute' or 'swap'.",
        default="recompute",
    )
    """How to evict a running sequence when KV blocks run out: 'recompute' or 'swap'."""
    scheduling_policy: PolicyName = field(default="priority", metadata={
        "help": "Admission order: priority (priority, then arrival), fcfs (arrival only) or "
                "short-first (least prompt + max_new_tokens first, aged).",
        "choices": POLICIES})
    """Admission order: priority (priority, then arrival), fcfs (arrival only) or short-first
    (least prompt + max_new_tokens first, aged); see `policy`."""
    aging_tokens_per_s: float = _help(
        "short-first: a waiting request's cost drops this many tokens per second waited.",
        default=1000.0,
    )
    """short-first: a waiting request's cost drops this many tokens per second waited, so a
    request arriving more than cost / aging_tokens_per_s seconds later never goes first."""
    long_prefill_threshold: int = _help(
        "Prompts longer than this (tokens) are long prefills, throttled; 0 = off.", default=0
    )
    """Prompts longer than this (tokens) are long prefills, throttled; 0 = off."""
    max_long_prefills: int = _help(
        "Most long prefills (see long_prefill_threshold) running at once; others wait.", default=1
    )
    """Most long prefills (see long_prefill_threshold) running at once; others wait."""

    def __post_init__(self) -> None:
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_num_queued_requests < 0:
            raise ConfigError(
                f"max_num_queued_requests must be >= 0, got {self.max_num_queued_requests}"
            )
        if self.preemption_mode not in ("recompute", "swap"):
            raise ConfigError(
                f"preemption_mode must be 'recompute' or 'swap', got {self.preemption_mode!r}"
            )
        if self.scheduling_policy not in POLICIES:
            raise ConfigError(f"scheduling_policy must be one of {', '.join(POLICIES)}, "
                              f"got {self.scheduling_policy!r}")
        if not self.aging_tokens_per_s > 0:  # also refuses NaN
            raise ConfigError(f"aging_tokens_per_s must be > 0, got {self.aging_tokens_per_s}")
        if not isinstance(self.long_prefill_threshold, int) or self.long_prefill_threshold < 0:
            raise ConfigError(f"long_prefill_threshold must be an integer >= 0 (0 = off), "
                              f"got {self.long_prefill_threshold!r}")
        if not isinstance(self.max_long_prefills, int) or self.max_long_prefills < 1:
            raise ConfigError(f"max_long_prefills must be an integer >= 1, "
                              f"got {self.max_long_prefills!r}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ConfigError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_num_seqs ({self.max_num_seqs}) so that every running sequence can "
                "decode each step; raise max_num_batched_tokens or lower max_num_seqs"
            )
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ConfigError(
                f"without chunked prefill a whole prompt must fit one step: "
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                f"max_model_len ({self.max_model_len}); enable chunked prefill or raise it"
            )


def field_help(config_cls: type) -> dict[str, str]:
    """Field name -> one-line help of a config dataclass, for CLI option help."""
    return {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(config_cls)}

"""Counters the scheduler exposes for metrics (Prometheus, logs). Plain data.

Must not import torch or tensorrt.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from trtkv.runtime.kv.usage import KVUsage

REJECT_REASONS = ("too_long", "kv_capacity", "too_many_seqs", "queue_full")
"""Every `RequestRejectedError.reason` the scheduler can give."""


@dataclass
class Counters:
    """The scheduler's running counters (cumulative since start); `SchedulerStats` shows them."""

    recompute: int = 0
    swap: int = 0
    too_long: int = 0
    kv_capacity: int = 0
    too_many_seqs: int = 0
    queue_full: int = 0
    chunked: int = 0
    steps: int = 0
    prefix_queries: int = 0
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    prefix_deferred: int = 0
    long_deferred: int = 0
    store_deferred: int = 0

    def reject(self, reason: str) -> None:
        """Count a rejection; ``reason`` is one of `REJECT_REASONS`."""
        assert reason in REJECT_REASONS and reason in {f.name for f in fields(self)}, reason
        setattr(self, reason, getattr(self, reason) + 1)


@dataclass(frozen=True)
class SchedulerStats:
    """A snapshot of scheduler counters (cumulative since start) and queue lengths."""

    num_waiting: int
    num_running: int
    num_swapped: int
    num_preemptions_recompute: int
    num_preemptions_swap: int
    num_rejected_too_long: int
    num_rejected_kv_capacity: int
    num_rejected_queue_full: int
    num_chunked_prefills: int
    """Prefill chunks that covered only part of what the sequence had left to prefill."""
    num_steps: int
    """Non-empty plans produced."""
    num_prefix_queries: int
    """Admissions that looked up the prefix cache (0 with prefix caching off)."""
    num_prefix_query_tokens: int
    """Tokens (prompt, plus generated ones on a recompute) looked up at those admissions."""
    num_prefix_hit_tokens: int
    """Of those, tokens found in the cache (their K/V reused, not computed)."""
    kv: KVUsage
    num_prefix_deferrals: int = 0
    """Admission attempts deferred a step because another sequence was computing the
    request's next uncached block (in-flight prefix de-duplication)."""
    num_rejected_too_many_seqs: int = 0
    """Requests refused because their n exceeds max_num_seqs."""
    num_long_prefill_deferrals: int = 0
    """Admission attempts deferred a step because max_long_prefills long prefills ran."""
    num_store_deferrals: int = 0
    """Admission attempts deferred a step because the request's shared-store lookup ran."""

    @property
    def num_preemptions(self) -> int:
        return self.num_preemptions_recompute + self.num_preemptions_swap

    @property
    def num_rejected(self) -> dict[str, int]:
        """Rejections by reason."""
        return {
            "too_long": self.num_rejected_too_long,
            "kv_capacity": self.num_rejected_kv_capacity,
            "too_many_seqs": self.num_rejected_too_many_seqs,
            "queue_full": self.num_rejected_queue_full,
        }

    @property
    def num_prefix_evictions(self) -> int:
        """Cached blocks whose key was dropped because allocation reused them."""
        return self.kv.num_evictions

    @property
    def prefix_hit_rate(self) -> float:
        q = self.num_prefix_query_tokens
        return self.num_prefix_hit_tokens / q if q else 0.0

"""`KVUsage`: a snapshot of the KV pools' block counts, for metrics and admission."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KVUsage:
    """A snapshot of block usage, for metrics and admission decisions."""

    num_total: int
    num_used: int
    num_free: int
    num_host_total: int
    num_host_used: int
    num_host_free: int
    num_cached: int
    """Device blocks that carry a prefix-cache key (in use or free)."""
    num_evictions: int
    """Cached device blocks whose key was dropped (allocation reused them, or they expired)."""
    num_offload_total: int = 0
    """Host blocks of the offload tier (0: off)."""
    num_offload_used: int = 0
    num_offloaded: int = 0
    """Evicted device blocks whose content was copied to the host offload tier."""
    num_host_hit_blocks: int = 0
    """Prefix-hit blocks loaded from the host tier instead of recomputed."""
    num_store_hit_blocks: int = 0
    """Blocks fetched from the shared store (staged in host blocks)."""
    eviction_policy: str = "lru"
    """The device pool's prefix-cache eviction policy (lru, ttl, cost)."""
    evictions_by_reason: dict[str, int] = field(default_factory=dict)
    """``capacity`` (reused for new blocks) and ``ttl`` (expired) evictions."""
    evicted_age_s: float = 0.0
    """Sum of the seconds each evicted block had been free (mean age: / num_evictions)."""
    num_hit_blocks: int = 0
    """Device prefix-cache hits, in blocks."""

    @property
    def usage_fraction(self) -> float:
        return self.num_used / self.num_total if self.num_total else 0.0

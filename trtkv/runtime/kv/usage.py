"""`KVUsage`: a snapshot of the KV pools' block counts, for metrics and admission."""

from __future__ import annotations

from dataclasses import dataclass


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
    """Cached device blocks whose key was dropped when allocation reused them."""
    num_offload_total: int = 0
    """Host blocks of the offload tier (0: off)."""
    num_offload_used: int = 0
    num_offloaded: int = 0
    """Evicted device blocks whose content was copied to the host offload tier."""
    num_host_hit_blocks: int = 0
    """Prefix-hit blocks loaded from the host tier instead of recomputed."""
    num_store_hit_blocks: int = 0
    """Blocks fetched from the shared store (staged in host blocks)."""

    @property
    def usage_fraction(self) -> float:
        return self.num_used / self.num_total if self.num_total else 0.0

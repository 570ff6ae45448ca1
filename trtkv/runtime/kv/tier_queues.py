"""`TierQueues`: what the KV manager and the tiers below it hand each other between steps.

Owns nothing of its own: a view over the offload tier's queues (block moves for the next
plan, store blocks to write into host memory) and the prefix cache's newly keyed blocks (to
publish to the shared store), plus the store lookup's keys. `KVCacheManager.tiers` is the
one instance; the scheduler takes the moves once per step, `TierTransfer` the rest.
Pure Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trtkv.runtime.kv.block_tables import BlockCopy
from trtkv.runtime.kv.offload import OffloadTier
from trtkv.runtime.kv.prefix_cache import PrefixCache, PrefixHit, iter_block_keys


class TierQueues:
    """The manager's tier-facing verbs (see the module docstring).

    Args:
        offload: the host offload tier (and the shared store behind it).
        prefix: the prefix cache.
        lookup: the manager's `KVCacheManager.lookup_prefix`.
        block_size: tokens per block.
    """

    def __init__(self, offload: OffloadTier, prefix: PrefixCache,
                 lookup: Callable[[Sequence[int], str | None], PrefixHit], block_size: int) -> None:
        self._offload = offload
        self._prefix = prefix
        self._lookup = lookup
        self._block_size = block_size

    @property
    def has_remote(self) -> bool:
        """Whether a shared store backs the prefix cache (`remote_keys` names what to ask it)."""
        return self._offload.remote is not None and self._offload.is_enabled

    def remote_keys(self, token_ids: Sequence[int], cache_salt: str | None = None) -> list[bytes]:
        """Keys of the full blocks of ``token_ids`` past the local (device + host) hit: what
        to ask the shared store for. Empty without a store."""
        if not self.has_remote:
            return []
        hit = self._lookup(token_ids, cache_salt)
        parent = hit.keys[-1] if hit.keys else None
        return list(iter_block_keys(token_ids, self._block_size, cache_salt, parent, hit.num_blocks))

    def stage_remote(self, keys: Sequence[bytes], blocks: Sequence[object]) -> int:
        """Stage the store's blocks for ``keys`` in host blocks, so that the next
        `KVCacheManager.lookup_prefix` finds them; returns how many. The engine writes
        `take_host_writes` into the host pool before the step runs."""
        return self._offload.stage(keys, blocks)

    def take_moves(self) -> tuple[list[BlockCopy], list[BlockCopy]]:
        """(swap_out, swap_in) copies the offload tier added since the last call.

        The scheduler calls it once per step, at the end of planning; the copies go into
        the plan's ``swap_out`` / ``swap_in``.
        """
        return self._offload.take_moves()

    def take_host_writes(self) -> list[tuple[int, object]]:
        """(host block, block data) fetched from the store, to write before the step runs."""
        return self._offload.take_host_writes()

    def spill_evicted(self) -> None:
        """From now on, record the blocks host memory evicts (`take_spills`), for a disk tier."""
        self._offload.spill_evicted()

    def take_spills(self) -> list[tuple[int, bytes]]:
        """(host block, key) evicted from host memory since the last call; their data is still
        in the host pool until the next step runs (read it before `execute`)."""
        spills, self._offload.spills = self._offload.spills, []
        return spills

    def track_new_blocks(self) -> None:
        """Record every block newly keyed from now on (`take_new_blocks`), for publishing."""
        self._prefix.new_blocks = []

    def take_new_blocks(self) -> list[tuple[int, bytes]]:
        """(device block, key) of the blocks keyed since the last call (their K/V are in)."""
        new = self._prefix.new_blocks
        if not new:
            return []
        self._prefix.new_blocks = []
        return new

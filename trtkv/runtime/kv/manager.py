"""The KV cache manager: the one owner of every sequence's block table.

Owns: device block tables (seq id -> block ids), the number of token slots each table
holds, copy-on-write of shared blocks, rollback, swap to the host tier (`HostTier`), the
prefix cache (`PrefixCache`) and the offload tiers below it (`OffloadTier`: cached blocks
the device pool evicts are copied to host memory and loaded back on a later hit; a shared
store can fill host blocks; what the tiers exchange with it goes through `TierQueues`,
``kv.tiers``). It is a facade: the scheduler never touches a pool.

Token-slot model: a sequence's table holds ``num_tokens(seq_id)`` slots, the tokens whose
K/V are (or are about to be, this step) in the pool; it always has exactly
``ceil(num_tokens / block_size)`` blocks. Growing a sequence whose last block is partial and
shared (ref count > 1, or published in the prefix cache) first moves it to a fresh block
and records a ``(src, dst)`` copy for the backend (copy-on-write).

Every mutating verb checks first and then mutates, so a refused call changes nothing.
Pure Python; must not import torch, onnx, onnxruntime or tensorrt.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

from trtkv.runtime.kv.block_pool import BlockPool
from trtkv.runtime.kv.block_tables import BlockCopy, BlockTables
from trtkv.runtime.kv.errors import KVCacheError, NoFreeBlocksError
from trtkv.runtime.kv.host_tier import HostTier
from trtkv.runtime.kv.offload import OffloadTier, RemoteBlockSource
from trtkv.runtime.kv.prefix_cache import PrefixCache, PrefixHit, iter_block_keys
from trtkv.runtime.kv.tier_queues import TierQueues
from trtkv.runtime.kv.usage import KVUsage

__all__ = ["BlockCopy", "KVCacheManager", "KVUsage"]

_NO_HIT = PrefixHit()


class KVCacheManager:
    """Block tables over a paged KV pool, with fork, copy-on-write, rollback, swap and
    prefix caching.

    Args:
        num_blocks: device blocks in the pool.
        block_size: tokens per block.
        num_host_blocks: host-memory blocks for swap preemption (0: no host tier).
        enable_prefix_caching: reuse full blocks across sequences by content key; when off,
            `lookup_prefix` finds nothing and no block is ever keyed.
        num_offload_blocks: host blocks that keep evicted cached blocks (needs prefix
            caching); ids ``num_host_blocks ..`` in the backend's host pool.
        remote: the shared store (its blocks arrive through `TierQueues.stage_remote`); staged in the offload
            tier's host blocks, so it needs ``num_offload_blocks > 0``.
        eviction: which free cached block allocation evicts first: lru, ttl or cost (see
            `trtkv.runtime.kv.eviction`).
        prefix_ttl_s: with ttl, seconds a cached block may stay free before it expires.
        clock: monotonic seconds for the ttl policy and eviction ages (tests pass a fake).

    Raises:
        KVCacheError: on a non-positive ``block_size`` or negative block counts.
    """

    def __init__(self, num_blocks: int, block_size: int, num_host_blocks: int = 0,
                 enable_prefix_caching: bool = False, num_offload_blocks: int = 0,
                 remote: RemoteBlockSource | None = None, eviction: str = "lru",
                 prefix_ttl_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        if block_size <= 0:
            raise KVCacheError(f"block_size must be > 0, got {block_size}")
        if num_offload_blocks and not enable_prefix_caching:
            raise KVCacheError("the offload tier keeps cached blocks: enable prefix caching")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._pool = BlockPool(num_blocks, eviction, prefix_ttl_s, clock)
        self._host = HostTier(num_host_blocks)
        self._prefix = PrefixCache(self._pool, block_size)
        self._offload = OffloadTier(num_offload_blocks, num_host_blocks, remote)
        if num_offload_blocks:
            self._pool.on_evict = self._offload.on_evict
        self._tables = BlockTables(self._pool, block_size)
        self._tuples = self._tables.tuples
        self.tiers = TierQueues(self._offload, self._prefix, self.lookup_prefix, block_size)
        """Block moves, store staging and new blocks to publish, for the tiers (`TierQueues`)."""

    @property
    def num_blocks(self) -> int:
        return self._pool.num_blocks

    @property
    def num_host_blocks(self) -> int:
        return self._host.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self._pool.num_free

    def num_blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return self._tables.blocks_for(num_tokens)

    # -- queries --------------------------------------------------------------------------

    def has_seq(self, seq_id: int) -> bool:
        """Whether the sequence holds a table, on device or swapped out to host."""
        return seq_id in self._tables or self._host.has(seq_id)

    def is_swapped(self, seq_id: int) -> bool:
        return self._host.has(seq_id)

    def num_tokens(self, seq_id: int) -> int:
        """Token slots the sequence's table holds (on device or host)."""
        if seq_id in self._tables:
            return self._tables.num_tokens[seq_id]
        if self._host.has(seq_id):
            return self._host.num_tokens[seq_id]
        raise KVCacheError(f"unknown seq {seq_id}: it holds no blocks")

    def block_ids(self, seq_id: int) -> tuple[int, ...]:
        """The sequence's device block table.

        Raises:
            KVCacheError: unknown sequence, or swapped out (its blocks are on host).
        """
        cached = self._tuples.get(seq_id)  # the per-step path: one dict lookup
        if cached is not None:
            return cached
        self._device_table(seq_id)  # raises for an unknown or swapped-out sequence
        return self._tables.block_ids(seq_id)

    def ref_count(self, block_id: int) -> int:
        return self._pool.ref_count(block_id)

    def block_key(self, block_id: int) -> bytes | None:
        """The content key of a full, cached block (for publishing to a shared store)."""
        return self._pool.key_of(block_id)

    def usage(self) -> KVUsage:
        pool, host = self._pool, self._host.pool
        return KVUsage(
            num_total=pool.num_blocks, num_used=pool.num_used, num_free=pool.num_free,
            num_host_total=host.num_blocks, num_host_used=host.num_used,
            num_host_free=host.num_free, num_cached=pool.num_cached,
            num_evictions=pool.num_evictions, num_offload_total=self._offload.cache.num_blocks,
            num_offload_used=self._offload.cache.num_used,
            num_offloaded=self._offload.num_offloaded,
            num_host_hit_blocks=self._offload.num_host_hits,
            num_store_hit_blocks=self._offload.num_store_hits,
            eviction_policy=pool.eviction, evictions_by_reason=dict(pool.evictions_by_reason),
            evicted_age_s=pool.evicted_age_s, num_hit_blocks=pool.num_hit_blocks,
        )

    # -- prefix cache ---------------------------------------------------------------------

    def lookup_prefix(self, token_ids: Sequence[int], cache_salt: str | None = None,
                      block_keys: Sequence[bytes] | None = None) -> PrefixHit:
        """Cached full blocks that start ``token_ids`` (never its last token), on device
        then in host memory; no side effect.

        Pass the result to `can_allocate` / `allocate` of a new sequence, in the same
        scheduler step, to reuse the blocks. ``block_keys``: the sequence's keys from
        `extend_block_keys`, so that a request looked up every step is hashed once.
        """
        if not self.enable_prefix_caching:
            return _NO_HIT
        host = self._offload.cache if self._offload.is_enabled else None
        return self._prefix.lookup(token_ids, cache_salt, host, block_keys)

    def extend_block_keys(self, token_ids: Sequence[int], cache_salt: str | None,
                          block_keys: list[bytes]) -> list[bytes]:
        """Append to ``block_keys`` the keys of the full blocks of ``token_ids`` it lacks
        (never the block holding the last token) and return it; empty with caching off.

        ``block_keys`` must hold the keys of the first blocks of ``token_ids`` (tokens are
        only ever appended, so a sequence can keep its list across steps).
        """
        if self.enable_prefix_caching:
            parent = block_keys[-1] if block_keys else None
            block_keys.extend(iter_block_keys(token_ids, self.block_size, cache_salt, parent,
                                              len(block_keys)))
        return block_keys

    def cache_blocks(self, seq_id: int, token_ids: Sequence[int], num_computed: int,
                     block_keys: Sequence[bytes] = ()) -> None:
        """Publish the sequence's full blocks among its first ``num_computed`` tokens.

        Call after the backend computed those tokens; ``token_ids`` are the sequence's tokens
        and ``block_keys`` its known block keys (`extend_block_keys`), not hashed again.

        Raises:
            KVCacheError: unknown or swapped-out sequence, or more tokens than it holds.
        """
        table = self._device_table(seq_id)
        if not num_computed <= min(self._tables.num_tokens[seq_id], len(token_ids)):
            raise KVCacheError(f"seq {seq_id} holds {self._tables.num_tokens[seq_id]} tokens, "
                               f"cannot cache {num_computed}")
        self._prefix.cache(seq_id, table, token_ids, num_computed, block_keys)

    # -- allocate / append ----------------------------------------------------------------

    def can_allocate(self, seq_id: int, num_tokens: int, prefix: PrefixHit = _NO_HIT) -> bool:
        """Whether `allocate` (seq_id, num_tokens, prefix) would succeed now."""
        if seq_id not in self._tables:
            if self._host.has(seq_id) or num_tokens < 0:
                return False
            # Reviving a cached block that is free takes it out of the free queue too.
            revived = sum(1 for b in prefix.block_ids if self._pool.ref_count(b) == 0)
            num_new = max(0, self.num_blocks_for(num_tokens) - prefix.num_device_blocks)
            return num_new + revived <= self._pool.num_free
        return self._tables.num_new_blocks(seq_id, num_tokens) <= self._pool.num_free

    def allocate(self, seq_id: int, num_tokens: int, prefix: PrefixHit = _NO_HIT) -> list[BlockCopy]:
        """Make the sequence's table hold at least ``num_tokens`` slots, creating it if new.

        Args:
            prefix: for a new sequence, cached blocks from `lookup_prefix` to start with.

        Returns:
            The copy-on-write copies the backend must do first (at most one).

        Raises:
            NoFreeBlocksError: not enough free blocks; nothing changed.
            KVCacheError: the sequence is swapped out, ``num_tokens`` is negative, or a
                prefix is given for an existing sequence.
        """
        copies = self.try_allocate(seq_id, num_tokens, prefix)
        if copies is None:
            raise NoFreeBlocksError(f"seq {seq_id} cannot grow to {num_tokens} tokens: the "
                                    f"pool has {self._pool.num_free} free KV blocks")
        return copies

    def try_allocate(self, seq_id: int, num_tokens: int,
                     prefix: PrefixHit = _NO_HIT) -> list[BlockCopy] | None:
        """`allocate`, but returns None (changing nothing) when blocks are short.

        The scheduler's per-step path: one call instead of `can_allocate` + `allocate`.
        """
        if num_tokens < 0:
            raise KVCacheError(f"num_tokens must be >= 0, got {num_tokens}")
        table = self._tables.tables.get(seq_id)
        if table is None:
            return self._start(seq_id, num_tokens, prefix)
        if prefix.num_blocks:
            raise KVCacheError(f"seq {seq_id} already has blocks; a prefix hit is for new seqs")
        # The per-step path, inline: a decode token that fits the exclusive last block.
        num_old = self._tables.num_tokens[seq_id]
        if num_old < num_tokens <= len(table) * self.block_size and self._pool.is_exclusive(table[-1]):
            self._tables.num_tokens[seq_id] = num_tokens
            return []
        return self._tables.grow(seq_id, num_tokens)

    def _start(self, seq_id: int, num_tokens: int, prefix: PrefixHit) -> list[BlockCopy] | None:
        if self._host.has(seq_id):
            raise KVCacheError(f"seq {seq_id} is swapped out; swap it in first")
        if prefix.num_blocks * self.block_size > num_tokens:
            raise KVCacheError(f"a {prefix.num_blocks}-block prefix exceeds {num_tokens} tokens")
        if not self.can_allocate(seq_id, num_tokens, prefix):
            return None
        num_dev = prefix.num_device_blocks
        host = self._offload.cache
        for block_id, key in zip(prefix.block_ids, prefix.keys, strict=False):
            if self._pool.key_of(block_id) != key:
                raise KVCacheError(f"stale prefix hit: block {block_id} was evicted since the "
                                   "lookup; look up and allocate in the same step")
        for host_block, key in zip(prefix.host_block_ids, prefix.keys[num_dev:], strict=True):
            if host.get(key) != host_block:
                raise KVCacheError(f"stale prefix hit: host block {host_block} was reused since "
                                   "the lookup; look up and allocate in the same step")
            host.pin(host_block)  # so that offloading what allocation evicts cannot reuse it
        for block_id in prefix.block_ids:  # first, so that allocating cannot evict them
            self._pool.touch(block_id)
        new = self._pool.allocate(self.num_blocks_for(num_tokens) - num_dev)
        for depth, host_block, block_id in zip(itertools.count(num_dev), prefix.host_block_ids, new,
                                               strict=False):
            self._offload.load(host_block, block_id)
            self._pool.set_key(block_id, prefix.keys[depth], prefix.keys[depth - 1] if depth else None, depth)
        self._tables.add(seq_id, [*prefix.block_ids, *new], num_tokens)
        if self.enable_prefix_caching:
            self._prefix.start(seq_id, prefix)
        return []

    def can_append(self, seq_id: int, num_new_tokens: int = 1) -> bool:
        """Whether the sequence (on device) can grow by ``num_new_tokens`` slots now."""
        if seq_id not in self._tables:
            return False
        return self.can_allocate(seq_id, self._tables.num_tokens[seq_id] + num_new_tokens)

    def append(self, seq_id: int, num_new_tokens: int = 1) -> list[BlockCopy]:
        """Grow the sequence by ``num_new_tokens`` slots; see `allocate`.

        Raises:
            KVCacheError: unknown or swapped-out sequence.
            NoFreeBlocksError: not enough free blocks; nothing changed.
        """
        self._device_table(seq_id)
        return self.allocate(seq_id, self._tables.num_tokens[seq_id] + num_new_tokens)

    # -- free / fork / truncate -----------------------------------------------------------

    def free(self, seq_id: int) -> None:
        """Release every block of the sequence (device or host) and forget it.

        Raises:
            KVCacheError: unknown sequence (never allocated, or already freed).
        """
        if seq_id in self._tables:
            self._tables.remove(seq_id)
        elif self._host.has(seq_id):
            self._host.release(seq_id)
        else:
            raise KVCacheError(f"cannot free seq {seq_id}: unknown or already freed")
        self._prefix.forget(seq_id)

    def fork(self, parent_seq_id: int, child_seq_id: int) -> None:
        """Give ``child_seq_id`` the parent's table, sharing every block (ref counts + 1).

        Raises:
            KVCacheError: parent unknown or swapped out, or child already exists.
        """
        table = self._device_table(parent_seq_id)
        if self.has_seq(child_seq_id):
            raise KVCacheError(f"cannot fork into seq {child_seq_id}: it already exists")
        for block_id in table:
            self._pool.incref(block_id)
        self._tables.add(child_seq_id, list(table), self._tables.num_tokens[parent_seq_id])
        self._prefix.fork(parent_seq_id, child_seq_id)

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        """Roll the sequence back to ``num_tokens`` slots, freeing blocks past the new end.

        Raises:
            KVCacheError: unknown or swapped-out sequence, or ``num_tokens`` outside
                ``[0, num_tokens(seq_id)]``.
        """
        self._device_table(seq_id)
        self._tables.truncate(seq_id, num_tokens)
        self._prefix.truncate(seq_id, num_tokens)

    # -- swap (host tier) -----------------------------------------------------------------

    def can_swap_out(self, seq_id: int) -> bool:
        table = self._tables.tables.get(seq_id)
        return table is not None and self._host.can_hold(len(table))

    def swap_out(self, seq_id: int) -> list[BlockCopy]:
        """Move the sequence's blocks to host memory.

        Returns:
            (device_block, host_block) copies the backend must do before reusing the blocks.

        Raises:
            KVCacheError: unknown or already swapped-out sequence.
            NoFreeBlocksError: the host tier lacks room; nothing changed.
        """
        self._device_table(seq_id)
        return self._host.swap_out(seq_id, self._tables)

    def can_swap_in(self, seq_id: int, num_new_tokens: int = 0) -> bool:
        """Whether the sequence can come back to device and then grow by ``num_new_tokens``."""
        if not self._host.has(seq_id):
            return False
        num_tokens = self._host.num_tokens[seq_id] + num_new_tokens
        return self.num_blocks_for(num_tokens) <= self._pool.num_free

    def swap_in(self, seq_id: int) -> list[BlockCopy]:
        """Move a swapped-out sequence's blocks back to fresh device blocks.

        Returns:
            (host_block, device_block) copies the backend must do before the forward pass.

        Raises:
            KVCacheError: the sequence is not swapped out.
            NoFreeBlocksError: not enough free device blocks; nothing changed.
        """
        copies = self._host.swap_in(seq_id, self._tables)
        self._prefix.restore(seq_id, self._tables.tables[seq_id])
        return copies

    # -- checks ---------------------------------------------------------------------------

    def check_integrity(self) -> None:
        """Assert every invariant of tables, pools and key chains; O(blocks + table lengths).

        Raises:
            AssertionError: with a message naming the first broken invariant.
        """
        tables = self._tables.tables
        both = tables.keys() & self._host.tables.keys()
        assert not both, f"seqs {sorted(both)} are both on device and swapped out"
        self._pool.check_integrity(self._tables.check_integrity(), "device pool")
        self._host.check_integrity(self.block_size)
        self._offload.cache.check_integrity()
        all_tokens = {**self._tables.num_tokens, **self._host.num_tokens}
        self._prefix.check_integrity(tables, all_tokens, set(all_tokens))

    def _device_table(self, seq_id: int) -> list[int]:
        table = self._tables.tables.get(seq_id)
        if table is None:
            if self._host.has(seq_id):
                raise KVCacheError(f"seq {seq_id} is swapped out; swap it in first")
            raise KVCacheError(f"unknown seq {seq_id}: it holds no device blocks")
        return table

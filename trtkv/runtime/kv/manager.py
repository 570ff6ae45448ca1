"""The KV cache manager: the one owner of every sequence's block table.

Owns: device block tables (seq id -> block ids), the number of token slots each table
holds, copy-on-write of shared blocks, rollback, and the host tier used by swap preemption.
It is a facade over two `BlockPool`s (device and host); the scheduler never touches a pool.

Token-slot model: a sequence's table holds ``num_tokens(seq_id)`` slots, the tokens whose
K/V are (or are about to be, this step) in the pool; it always has exactly
``ceil(num_tokens / block_size)`` blocks. Growing a sequence whose last block is partial and
shared (ref count > 1) first moves it to a fresh block and records a ``(src, dst)`` copy for
the backend (copy-on-write).

Every mutating verb checks first and then mutates, so a refused call changes nothing.
Pure Python; must not import torch, onnx, onnxruntime or tensorrt.
"""

from __future__ import annotations

from dataclasses import dataclass

from trtkv.runtime.kv.block_pool import BlockPool
from trtkv.runtime.kv.errors import KVCacheError, NoFreeBlocksError

BlockCopy = tuple[int, int]
"""A (source block, destination block) copy the backend performs before the forward pass."""


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

    @property
    def usage_fraction(self) -> float:
        return self.num_used / self.num_total if self.num_total else 0.0


class KVCacheManager:
    """Block tables over a paged KV pool, with fork, copy-on-write, rollback and swap.

    Args:
        num_blocks: device blocks in the pool.
        block_size: tokens per block.
        num_host_blocks: host-memory blocks for swap preemption (0: no host tier).
        enable_prefix_caching: reuse full blocks across sequences by content key.

    Raises:
        KVCacheError: on a non-positive ``block_size`` or negative block counts.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        num_host_blocks: int = 0,
        enable_prefix_caching: bool = False,
    ) -> None:
        if block_size <= 0:
            raise KVCacheError(f"block_size must be > 0, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._pool = BlockPool(num_blocks)
        self._host_pool = BlockPool(num_host_blocks)
        self._tables: dict[int, list[int]] = {}
        self._num_tokens: dict[int, int] = {}
        self._host_tables: dict[int, list[int]] = {}
        self._host_num_tokens: dict[int, int] = {}
        # Block tables change every block_size tokens, but the scheduler reads them every step.
        self._table_tuples: dict[int, tuple[int, ...]] = {}

    @property
    def num_blocks(self) -> int:
        return self._pool.num_blocks

    @property
    def num_host_blocks(self) -> int:
        return self._host_pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self._pool.num_free

    def num_blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    # -- queries --------------------------------------------------------------------------

    def has_seq(self, seq_id: int) -> bool:
        """Whether the sequence holds a table, on device or swapped out to host."""
        return seq_id in self._tables or seq_id in self._host_tables

    def is_swapped(self, seq_id: int) -> bool:
        return seq_id in self._host_tables

    def num_tokens(self, seq_id: int) -> int:
        """Token slots the sequence's table holds (on device or host)."""
        if seq_id in self._num_tokens:
            return self._num_tokens[seq_id]
        if seq_id in self._host_num_tokens:
            return self._host_num_tokens[seq_id]
        raise KVCacheError(f"unknown seq {seq_id}: it holds no blocks")

    def block_ids(self, seq_id: int) -> tuple[int, ...]:
        """The sequence's device block table.

        Raises:
            KVCacheError: unknown sequence, or swapped out (its blocks are on host).
        """
        cached = self._table_tuples.get(seq_id)
        if cached is None:
            cached = tuple(self._device_table(seq_id))
            self._table_tuples[seq_id] = cached
        return cached

    def ref_count(self, block_id: int) -> int:
        return self._pool.ref_count(block_id)

    def usage(self) -> KVUsage:
        return KVUsage(
            num_total=self._pool.num_blocks,
            num_used=self._pool.num_used,
            num_free=self._pool.num_free,
            num_host_total=self._host_pool.num_blocks,
            num_host_used=self._host_pool.num_used,
            num_host_free=self._host_pool.num_free,
            num_cached=self._pool.num_cached,
            num_evictions=self._pool.num_evictions,
        )

    # -- allocate / append ----------------------------------------------------------------

    def can_allocate(self, seq_id: int, num_tokens: int) -> bool:
        """Whether `allocate` (seq_id, num_tokens) would succeed now."""
        table = self._tables.get(seq_id)
        if table is None:
            if seq_id in self._host_tables or num_tokens < 0:
                return False
            return self.num_blocks_for(num_tokens) <= self._pool.num_free
        return self._num_new_blocks(seq_id, table, num_tokens) <= self._pool.num_free

    def allocate(self, seq_id: int, num_tokens: int) -> list[BlockCopy]:
        """Make the sequence's table hold at least ``num_tokens`` slots, creating it if new.

        Returns:
            The copy-on-write copies the backend must do first (at most one).

        Raises:
            NoFreeBlocksError: not enough free blocks; nothing changed.
            KVCacheError: the sequence is swapped out, or ``num_tokens`` is negative.
        """
        copies = self.try_allocate(seq_id, num_tokens)
        if copies is None:
            raise NoFreeBlocksError(
                f"seq {seq_id} cannot grow to {num_tokens} tokens: the pool has "
                f"{self._pool.num_free} free KV blocks"
            )
        return copies

    def try_allocate(self, seq_id: int, num_tokens: int) -> list[BlockCopy] | None:
        """`allocate`, but returns None (changing nothing) when blocks are short.

        The scheduler's per-step path: one call instead of `can_allocate` + `allocate`.
        """
        if num_tokens < 0:
            raise KVCacheError(f"num_tokens must be >= 0, got {num_tokens}")
        table = self._tables.get(seq_id)
        pool = self._pool
        if table is None:
            if seq_id in self._host_tables:
                raise KVCacheError(f"seq {seq_id} is swapped out; swap it in first")
            num_new = self.num_blocks_for(num_tokens)
            if num_new > pool.num_free:
                return None
            self._tables[seq_id] = pool.allocate(num_new)
            self._num_tokens[seq_id] = num_tokens
            return []
        num_old = self._num_tokens[seq_id]
        if num_tokens <= num_old:
            return []
        block_size = self.block_size
        must_copy = num_old % block_size != 0 and not pool.is_exclusive(table[-1])
        num_more = -(-num_tokens // block_size) - len(table)
        if must_copy or num_more > 0:
            if num_more + must_copy > pool.num_free:
                return None
            self._table_tuples.pop(seq_id, None)
        copies: list[BlockCopy] = []
        if must_copy:
            src = table[-1]
            (dst,) = pool.allocate(1)
            pool.decref(src)
            table[-1] = dst
            copies.append((src, dst))
        if num_more > 0:
            table.extend(pool.allocate(num_more))
        self._num_tokens[seq_id] = num_tokens
        return copies

    def can_append(self, seq_id: int, num_new_tokens: int = 1) -> bool:
        """Whether the sequence (on device) can grow by ``num_new_tokens`` slots now."""
        if seq_id not in self._tables:
            return False
        return self.can_allocate(seq_id, self._num_tokens[seq_id] + num_new_tokens)

    def append(self, seq_id: int, num_new_tokens: int = 1) -> list[BlockCopy]:
        """Grow the sequence by ``num_new_tokens`` slots; see `allocate`.

        Raises:
            KVCacheError: unknown or swapped-out sequence.
            NoFreeBlocksError: not enough free blocks; nothing changed.
        """
        self._device_table(seq_id)
        return self.allocate(seq_id, self._num_tokens[seq_id] + num_new_tokens)

    def _must_copy_last(self, table: list[int], num_old: int) -> bool:
        # Writing into a partial last block that others hold (or that is published in the
        # prefix cache, after a truncate) would change their tokens: copy it first.
        return num_old % self.block_size != 0 and not self._pool.is_exclusive(table[-1])

    def _num_new_blocks(self, seq_id: int, table: list[int], num_tokens: int) -> int:
        num_old = self._num_tokens[seq_id]
        if num_tokens <= num_old:
            return 0
        num = -(-num_tokens // self.block_size) - len(table)
        return num + 1 if self._must_copy_last(table, num_old) else num

    # -- free / fork / truncate -----------------------------------------------------------

    def free(self, seq_id: int) -> None:
        """Release every block of the sequence (device or host) and forget it.

        Raises:
            KVCacheError: unknown sequence (never allocated, or already freed).
        """
        if seq_id in self._tables:
            table = self._tables.pop(seq_id)
            del self._num_tokens[seq_id]
            self._table_tuples.pop(seq_id, None)
            # Tail first, so that the prefix blocks, the likelier cache hits, are evicted last.
            for block_id in reversed(table):
                self._pool.decref(block_id)
        elif seq_id in self._host_tables:
            del self._host_num_tokens[seq_id]
            for block_id in reversed(self._host_tables.pop(seq_id)):
                self._host_pool.decref(block_id)
        else:
            raise KVCacheError(f"cannot free seq {seq_id}: unknown or already freed")

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
        self._tables[child_seq_id] = list(table)
        self._num_tokens[child_seq_id] = self._num_tokens[parent_seq_id]

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        """Roll the sequence back to ``num_tokens`` slots, freeing blocks past the new end.

        Raises:
            KVCacheError: unknown or swapped-out sequence, or ``num_tokens`` outside
                ``[0, num_tokens(seq_id)]``.
        """
        table = self._device_table(seq_id)
        if not 0 <= num_tokens <= self._num_tokens[seq_id]:
            raise KVCacheError(
                f"cannot truncate seq {seq_id} to {num_tokens} tokens: it holds "
                f"{self._num_tokens[seq_id]}"
            )
        num_keep = self.num_blocks_for(num_tokens)
        for block_id in reversed(table[num_keep:]):
            self._pool.decref(block_id)
        if num_keep < len(table):
            del table[num_keep:]
            self._table_tuples.pop(seq_id, None)
        self._num_tokens[seq_id] = num_tokens

    # -- swap (host tier) -----------------------------------------------------------------

    def can_swap_out(self, seq_id: int) -> bool:
        table = self._tables.get(seq_id)
        return table is not None and len(table) <= self._host_pool.num_free

    def swap_out(self, seq_id: int) -> list[BlockCopy]:
        """Move the sequence's blocks to host memory.

        Returns:
            (device_block, host_block) copies the backend must do before reusing the blocks.

        Raises:
            KVCacheError: unknown or already swapped-out sequence.
            NoFreeBlocksError: the host tier lacks room; nothing changed.
        """
        table = self._device_table(seq_id)
        host_table = self._host_pool.allocate(len(table))
        for block_id in reversed(table):
            self._pool.decref(block_id)
        del self._tables[seq_id]
        self._table_tuples.pop(seq_id, None)
        self._host_tables[seq_id] = host_table
        self._host_num_tokens[seq_id] = self._num_tokens.pop(seq_id)
        return list(zip(table, host_table, strict=True))

    def can_swap_in(self, seq_id: int, num_new_tokens: int = 0) -> bool:
        """Whether the sequence can come back to device and then grow by ``num_new_tokens``."""
        host_table = self._host_tables.get(seq_id)
        if host_table is None:
            return False
        num_tokens = self._host_num_tokens[seq_id] + num_new_tokens
        return self.num_blocks_for(num_tokens) <= self._pool.num_free

    def swap_in(self, seq_id: int) -> list[BlockCopy]:
        """Move a swapped-out sequence's blocks back to fresh device blocks.

        Returns:
            (host_block, device_block) copies the backend must do before the forward pass.

        Raises:
            KVCacheError: the sequence is not swapped out.
            NoFreeBlocksError: not enough free device blocks; nothing changed.
        """
        host_table = self._host_tables.get(seq_id)
        if host_table is None:
            raise KVCacheError(f"seq {seq_id} is not swapped out")
        table = self._pool.allocate(len(host_table))
        for block_id in reversed(host_table):
            self._host_pool.decref(block_id)
        del self._host_tables[seq_id]
        self._tables[seq_id] = table
        self._num_tokens[seq_id] = self._host_num_tokens.pop(seq_id)
        return list(zip(host_table, table, strict=True))

    # -- checks ---------------------------------------------------------------------------

    def check_integrity(self) -> None:
        """Assert every invariant of tables and pools; O(num_blocks + table lengths).

        Raises:
            AssertionError: with a message naming the first broken invariant.
        """
        both = self._tables.keys() & self._host_tables.keys()
        assert not both, f"seqs {sorted(both)} are both on device and swapped out"
        assert self._tables.keys() == self._num_tokens.keys(), "device tables/lengths disagree"
        assert self._host_tables.keys() == self._host_num_tokens.keys(), "host tables disagree"
        refs: dict[int, int] = {}
        for seq_id, table in self._tables.items():
            self._check_table_length(seq_id, table, self._num_tokens[seq_id])
            cached = self._table_tuples.get(seq_id)
            assert cached is None or cached == tuple(table), f"seq {seq_id}: stale table tuple"
            for block_id in table:
                refs[block_id] = refs.get(block_id, 0) + 1
        self._pool.check_integrity(refs, "device pool")
        host_refs: dict[int, int] = {}
        for seq_id, table in self._host_tables.items():
            self._check_table_length(seq_id, table, self._host_num_tokens[seq_id])
            for block_id in table:
                host_refs[block_id] = host_refs.get(block_id, 0) + 1
        shared = [b for b, n in host_refs.items() if n > 1]
        assert not shared, f"host blocks {shared} are held by more than one seq"
        self._host_pool.check_integrity(host_refs, "host pool")
        stale = self._table_tuples.keys() - self._tables.keys()
        assert not stale, f"table tuples kept for seqs {sorted(stale)} that have no table"

    def _check_table_length(self, seq_id: int, table: list[int], num_tokens: int) -> None:
        want = self.num_blocks_for(num_tokens)
        assert len(table) == want, (
            f"seq {seq_id} holds {num_tokens} tokens in {len(table)} blocks, expected {want}"
        )

    def _device_table(self, seq_id: int) -> list[int]:
        table = self._tables.get(seq_id)
        if table is None:
            if seq_id in self._host_tables:
                raise KVCacheError(f"seq {seq_id} is swapped out; swap it in first")
            raise KVCacheError(f"unknown seq {seq_id}: it holds no device blocks")
        return table

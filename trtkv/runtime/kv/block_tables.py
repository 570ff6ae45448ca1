"""`BlockTables`: each device-resident sequence's block table and token-slot count.

Owns ``seq id -> [block ids]`` and ``seq id -> num_tokens`` for the sequences on device, the
rule that a table of ``n`` tokens has exactly ``ceil(n / block_size)`` blocks, growth with
copy-on-write of a shared partial last block, and rollback. Block ref counts are the
`BlockPool`'s; prefix keys, swap and tiers are the `KVCacheManager`'s, which is the only
caller. Pure Python.
"""

from __future__ import annotations

from trtkv.ops.schema import ceil_div
from trtkv.runtime.kv.block_pool import BlockPool
from trtkv.runtime.kv.errors import KVCacheError

__all__ = ["BlockCopy", "BlockTables", "ceil_div"]

BlockCopy = tuple[int, int]
"""A (source block, destination block) copy the backend performs before the forward pass."""


class BlockTables:
    """Device block tables over one pool.

    Args:
        pool: the device block pool (ref counts, free queue).
        block_size: tokens per block.
    """

    def __init__(self, pool: BlockPool, block_size: int) -> None:
        self.pool = pool
        self.block_size = block_size
        self.tables: dict[int, list[int]] = {}
        self.num_tokens: dict[int, int] = {}
        # Tables change every block_size tokens, but the scheduler reads them every step.
        self.tuples: dict[int, tuple[int, ...]] = {}

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self.tables

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return ceil_div(num_tokens, self.block_size)

    def block_ids(self, seq_id: int) -> tuple[int, ...]:
        """The table as a tuple, cached until it changes."""
        cached = self.tuples.get(seq_id)
        if cached is None:
            cached = self.tuples[seq_id] = tuple(self.tables[seq_id])
        return cached

    def num_new_blocks(self, seq_id: int, num_tokens: int) -> int:
        """Free blocks growing the sequence to ``num_tokens`` takes (copy-on-write included)."""
        table, num_old = self.tables[seq_id], self.num_tokens[seq_id]
        if num_tokens <= num_old:
            return 0
        # Writing into a partial last block that others hold (or that is published in the
        # prefix cache, after a truncate) would change their tokens: it is copied first.
        must_copy = num_old % self.block_size != 0 and not self.pool.is_exclusive(table[-1])
        return self.blocks_for(num_tokens) - len(table) + must_copy

    def grow(self, seq_id: int, num_tokens: int) -> list[BlockCopy] | None:
        """Make the table hold at least ``num_tokens`` slots; the copy-on-write copies (at
        most one), or None (changing nothing) when the pool is short of blocks."""
        table, num_old = self.tables[seq_id], self.num_tokens[seq_id]
        if num_tokens <= num_old:
            return []
        pool = self.pool
        must_copy = num_old % self.block_size != 0 and not pool.is_exclusive(table[-1])
        num_more = self.blocks_for(num_tokens) - len(table)
        if must_copy or num_more > 0:
            if num_more + must_copy > pool.num_free:
                return None
            self.tuples.pop(seq_id, None)
        copies: list[BlockCopy] = []
        if must_copy:
            src = table[-1]
            (dst,) = pool.allocate(1)
            pool.decref(src)
            table[-1] = dst
            copies.append((src, dst))
        if num_more > 0:
            table.extend(pool.allocate(num_more))
        self.num_tokens[seq_id] = num_tokens
        return copies

    def add(self, seq_id: int, table: list[int], num_tokens: int) -> None:
        """Record a table whose blocks the caller already holds (allocated or incref'd)."""
        self.tables[seq_id] = table
        self.num_tokens[seq_id] = num_tokens

    def remove(self, seq_id: int) -> tuple[list[int], int]:
        """Forget the sequence and drop its references, tail first (so that prefix blocks,
        the likelier cache hits, are evicted last); returns (table, num_tokens)."""
        table, num_tokens = self.tables.pop(seq_id), self.num_tokens.pop(seq_id)
        self.tuples.pop(seq_id, None)
        for block_id in reversed(table):
            self.pool.decref(block_id)
        return table, num_tokens

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        """Roll back to ``num_tokens`` slots, releasing the blocks past the new end."""
        table = self.tables[seq_id]
        if not 0 <= num_tokens <= self.num_tokens[seq_id]:
            raise KVCacheError(f"cannot truncate seq {seq_id} to {num_tokens} tokens: it "
                               f"holds {self.num_tokens[seq_id]}")
        num_keep = self.blocks_for(num_tokens)
        for block_id in reversed(table[num_keep:]):
            self.pool.decref(block_id)
        if num_keep < len(table):
            del table[num_keep:]
            self.tuples.pop(seq_id, None)
        self.num_tokens[seq_id] = num_tokens

    def check_integrity(self) -> dict[int, int]:
        """Assert the tables' own invariants; returns each block's expected ref count."""
        assert self.tables.keys() == self.num_tokens.keys(), "device tables/lengths disagree"
        refs: dict[int, int] = {}
        for seq_id, table in self.tables.items():
            want = self.blocks_for(self.num_tokens[seq_id])
            assert len(table) == want, (
                f"seq {seq_id} holds {self.num_tokens[seq_id]} tokens in {len(table)} blocks, "
                f"expected {want}"
            )
            cached = self.tuples.get(seq_id)
            assert cached is None or cached == tuple(table), f"seq {seq_id}: stale table tuple"
            for block_id in table:
                refs[block_id] = refs.get(block_id, 0) + 1
        stale = self.tuples.keys() - self.tables.keys()
        assert not stale, f"table tuples kept for seqs {sorted(stale)} that have no table"
        return refs

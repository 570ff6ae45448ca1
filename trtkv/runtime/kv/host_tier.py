"""The host-memory tier: block tables of sequences swapped out of the device pool.

Owns: the host `BlockPool` and, per swapped-out sequence, its host blocks and token count.
Every host block belongs to exactly one sequence (swapping does not share blocks). The
`KVCacheManager` decides when to swap; this module moves the tables and keeps the books.
Pure Python; must not import torch, onnx, onnxruntime or tensorrt.
"""

from __future__ import annotations

from trtkv.runtime.kv.block_pool import BlockPool
from trtkv.runtime.kv.block_tables import BlockCopy, BlockTables, ceil_div
from trtkv.runtime.kv.errors import KVCacheError


class HostTier:
    """Host blocks and the tables of swapped-out sequences.

    Args:
        num_blocks: host blocks available (0: no host tier, every swap is refused).
    """

    def __init__(self, num_blocks: int) -> None:
        self.pool = BlockPool(num_blocks)
        self.tables: dict[int, list[int]] = {}
        self.num_tokens: dict[int, int] = {}

    def has(self, seq_id: int) -> bool:
        return seq_id in self.tables

    def can_hold(self, num_blocks: int) -> bool:
        return num_blocks <= self.pool.num_free

    def store(self, seq_id: int, num_blocks: int, num_tokens: int) -> list[int]:
        """Allocate ``num_blocks`` host blocks for a sequence being swapped out.

        Raises:
            NoFreeBlocksError: not enough host blocks; nothing changed.
        """
        host_table = self.pool.allocate(num_blocks)
        self.tables[seq_id] = host_table
        self.num_tokens[seq_id] = num_tokens
        return host_table

    def swap_out(self, seq_id: int, tables: BlockTables) -> list[BlockCopy]:
        """Move a device table to host blocks; the (device, host) copies to run first.

        Raises:
            NoFreeBlocksError: not enough host blocks; nothing changed.
        """
        table = tables.tables[seq_id]
        host_table = self.store(seq_id, len(table), tables.num_tokens[seq_id])
        tables.remove(seq_id)
        return list(zip(table, host_table, strict=True))

    def swap_in(self, seq_id: int, tables: BlockTables) -> list[BlockCopy]:
        """Move a swapped-out table back to fresh device blocks; the (host, device) copies.

        Raises:
            KVCacheError: the sequence is not swapped out.
            NoFreeBlocksError: not enough free device blocks; nothing changed.
        """
        if not self.has(seq_id):
            raise KVCacheError(f"seq {seq_id} is not swapped out")
        table = tables.pool.allocate(len(self.tables[seq_id]))
        host_table, num_tokens = self.release(seq_id)
        tables.add(seq_id, table, num_tokens)
        return list(zip(host_table, table, strict=True))

    def release(self, seq_id: int) -> tuple[list[int], int]:
        """Free a sequence's host blocks; returns its host table and token count.

        Raises:
            KVCacheError: the sequence is not swapped out.
        """
        host_table = self.tables.pop(seq_id, None)
        if host_table is None:
            raise KVCacheError(f"seq {seq_id} is not swapped out")
        for block_id in reversed(host_table):
            self.pool.decref(block_id)
        return host_table, self.num_tokens.pop(seq_id)

    def check_integrity(self, block_size: int) -> None:
        assert self.tables.keys() == self.num_tokens.keys(), "host tables/lengths disagree"
        refs: dict[int, int] = {}
        for seq_id, table in self.tables.items():
            want = ceil_div(self.num_tokens[seq_id], block_size)
            assert len(table) == want, f"swapped seq {seq_id} has {len(table)} host blocks, not {want}"
            for block_id in table:
                refs[block_id] = refs.get(block_id, 0) + 1
        shared = [b for b, n in refs.items() if n > 1]
        assert not shared, f"host blocks {shared} are held by more than one seq"
        self.pool.check_integrity(refs, "host pool")

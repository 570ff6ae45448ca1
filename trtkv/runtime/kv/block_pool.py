"""The block pool: reference counts, the LRU free queue and content keys of KV blocks.

Owns: which block ids are in use (ref count > 0) and which are free, in LRU order. A freed
block goes to the tail of the free queue and allocation takes from the head, so the blocks
freed longest ago are reused first. A full block may carry a content key (prefix caching);
a free block keeps its key, and can be revived by it, until allocation evicts it.

Knows nothing of sequences: `KVCacheManager` owns the block tables. Pure Python; must not
import torch, onnx, onnxruntime or tensorrt. Every operation is O(1) per block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from trtkv.runtime.kv.errors import KVCacheError, NoFreeBlocksError


class BlockPool:
    """A fixed set of blocks ``0 .. num_blocks - 1`` with ref counts and an LRU free queue.

    Args:
        num_blocks: number of blocks in the pool (may be 0, e.g. an absent host tier).

    Raises:
        KVCacheError: on a negative ``num_blocks``.
    """

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 0:
            raise KVCacheError(f"num_blocks must be >= 0, got {num_blocks}")
        self.num_blocks = num_blocks
        self._ref_counts = [0] * num_blocks
        # An OrderedDict gives O(1) pop from the head, push to the tail and removal from the
        # middle (reviving a cached block), which is all the free queue needs.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._key_of_block: dict[int, bytes] = {}
        self._block_of_key: dict[bytes, int] = {}
        self.num_evictions = 0
        """Keyed blocks whose key was dropped because allocation reused them."""
        self.on_evict: Callable[[int, bytes], None] | None = None
        """Called with (block, key) as allocation evicts a cached block, before reuse (offload)."""

    @property
    def num_free(self) -> int:
        """Blocks with ref count 0 (including cached ones that can still be revived)."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached(self) -> int:
        """Blocks that carry a content key (in use or free)."""
        return len(self._key_of_block)

    def ref_count(self, block_id: int) -> int:
        self._check_id(block_id)
        return self._ref_counts[block_id]

    def is_exclusive(self, block_id: int) -> bool:
        """Whether one holder may write into the block in place: ref count 1 and no key.

        Unchecked (hot path): callers pass ids taken from their own block tables.
        """
        return self._ref_counts[block_id] == 1 and block_id not in self._key_of_block

    def allocate(self, num: int) -> list[int]:
        """Take ``num`` blocks from the head of the free queue, each with ref count 1.

        A block that still carries a key loses it (an eviction).

        Raises:
            NoFreeBlocksError: fewer than ``num`` free blocks; nothing changed.
        """
        if num > len(self._free):
            raise NoFreeBlocksError(f"need {num} free KV blocks, pool has {len(self._free)}")
        block_ids = []
        for _ in range(num):
            block_id, _ = self._free.popitem(last=False)
            key = self._key_of_block.pop(block_id, None)
            if key is not None:
                del self._block_of_key[key]
                self.num_evictions += 1
                if self.on_evict is not None:
                    self.on_evict(block_id, key)
            self._ref_counts[block_id] = 1
            block_ids.append(block_id)
        return block_ids

    def incref(self, block_id: int) -> None:
        """Add a holder to a block in use (fork). Reviving a free block goes through `touch`.

        Raises:
            KVCacheError: the id is out of range or the block is free (a foreign block).
        """
        self._check_id(block_id)
        if self._ref_counts[block_id] == 0:
            raise KVCacheError(f"block {block_id} is free; it cannot gain a holder by incref")
        self._ref_counts[block_id] += 1

    def decref(self, block_id: int) -> None:
        """Drop a holder; at ref count 0 the block goes to the tail of the free queue.

        Raises:
            KVCacheError: the id is out of range or the block is already free (double free).
        """
        self._check_id(block_id)
        ref = self._ref_counts[block_id]
        if ref == 0:
            raise KVCacheError(f"double free of block {block_id}: it is already free")
        self._ref_counts[block_id] = ref - 1
        if ref == 1:
            self._free[block_id] = None

    # -- content keys (prefix caching) ----------------------------------------------------

    def key_of(self, block_id: int) -> bytes | None:
        self._check_id(block_id)
        return self._key_of_block.get(block_id)

    def block_of(self, key: bytes) -> int | None:
        """The block holding content ``key``, in use or free; None when not cached."""
        return self._block_of_key.get(key)

    def set_key(self, block_id: int, key: bytes) -> bool:
        """Attach ``key`` to a block in use. Returns False when another block has that key.

        Raises:
            KVCacheError: the block is free or already has a different key.
        """
        self._check_id(block_id)
        if self._ref_counts[block_id] == 0:
            raise KVCacheError(f"block {block_id} is free; only blocks in use can be keyed")
        old = self._key_of_block.get(block_id)
        if old is not None:
            if old != key:
                raise KVCacheError(f"block {block_id} already has another content key")
            return True
        if key in self._block_of_key:
            return False
        self._key_of_block[block_id] = key
        self._block_of_key[key] = block_id
        return True

    def touch(self, block_id: int) -> None:
        """Add a holder to a keyed block (a prefix-cache hit), reviving it if it was free.

        Raises:
            KVCacheError: the block carries no key.
        """
        self._check_id(block_id)
        if block_id not in self._key_of_block:
            raise KVCacheError(f"block {block_id} carries no content key; it cannot be a hit")
        if self._ref_counts[block_id] == 0:
            del self._free[block_id]
        self._ref_counts[block_id] += 1

    # -- checks ---------------------------------------------------------------------------

    def is_free(self, block_id: int) -> bool:
        self._check_id(block_id)
        return block_id in self._free

    def free_block_ids(self) -> list[int]:
        """Free blocks in queue order, head (next to allocate) first. O(num_free)."""
        return list(self._free)

    def check_integrity(self, expected_refs: dict[int, int], name: str = "pool") -> None:
        """Assert that ref counts equal ``expected_refs`` (block -> holders) and the queue agrees.

        Raises:
            AssertionError: with the first inconsistency found.
        """
        for block_id, ref in enumerate(self._ref_counts):
            want = expected_refs.get(block_id, 0)
            assert ref == want, (
                f"{name}: block {block_id} has ref count {ref} but {want} tables hold it"
            )
            assert (ref == 0) == (block_id in self._free), (
                f"{name}: block {block_id} has ref count {ref} but "
                f"{'is' if block_id in self._free else 'is not'} in the free queue"
            )
        bad = set(expected_refs) - set(range(self.num_blocks))
        assert not bad, f"{name}: tables hold out-of-range block ids {sorted(bad)}"
        assert self.num_free + self.num_used == self.num_blocks, f"{name}: free + used != total"
        assert len(self._key_of_block) == len(self._block_of_key), f"{name}: key maps disagree"
        for block_id, key in self._key_of_block.items():
            assert self._block_of_key.get(key) == block_id, (
                f"{name}: block {block_id}'s key maps to block {self._block_of_key.get(key)}"
            )

    def _check_id(self, block_id: int) -> None:
        if not 0 <= block_id < self.num_blocks:
            raise KVCacheError(
                f"block id {block_id} is out of range for a pool of {self.num_blocks} blocks"
            )

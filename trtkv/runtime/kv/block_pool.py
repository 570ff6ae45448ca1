"""The block pool: reference counts, the free queue and content keys of KV blocks.

Owns: which block ids are in use (ref count > 0) and which are free, in the order of the
eviction policy (`eviction`: lru by default, the block freed longest ago is reused first;
ttl; cost). A full block may carry a content key (prefix caching), with its parent key and
depth in its prefix chain and its hit count; a free block keeps its key, and can be revived
by it, until allocation evicts it (or, with ttl, it expires).

Knows nothing of sequences: `KVCacheManager` owns the block tables. Pure Python; must not
import torch, onnx, onnxruntime or tensorrt. Every operation is O(1) per block (O(log n)
with the cost policy).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from trtkv.runtime.kv.errors import KVCacheError, NoFreeBlocksError
from trtkv.runtime.kv.eviction import EVICTION_POLICIES, make_free_queue


class BlockPool:
    """A fixed set of blocks ``0 .. num_blocks - 1`` with ref counts and a free queue.

    Args:
        num_blocks: number of blocks in the pool (may be 0, e.g. an absent host tier).
        eviction: the free queue's policy, one of `EVICTION_POLICIES` (see `eviction`).
        ttl_s: with ``eviction="ttl"``, seconds a cached block may stay free before it
            expires.
        clock: seconds, monotonic (tests pass a fake one).

    Raises:
        KVCacheError: on a negative ``num_blocks``, an unknown policy or ``ttl_s <= 0``
            with ttl.
    """

    def __init__(self, num_blocks: int, eviction: str = "lru", ttl_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if num_blocks < 0:
            raise KVCacheError(f"num_blocks must be >= 0, got {num_blocks}")
        if eviction not in EVICTION_POLICIES:
            raise KVCacheError(f"unknown eviction policy {eviction!r}; use one of {', '.join(EVICTION_POLICIES)}")
        if eviction == "ttl" and not ttl_s > 0:
            raise KVCacheError(f"the ttl eviction policy needs a ttl > 0 seconds, got {ttl_s}")
        self.num_blocks = num_blocks
        self.eviction = eviction
        self._clock = clock
        self._ref_counts = [0] * num_blocks
        self._free = make_free_queue(eviction, num_blocks)
        self._ttl_s = ttl_s if eviction == "ttl" else 0.0
        self._key_of_block: dict[int, bytes] = {}
        self._block_of_key: dict[bytes, int] = {}
        self._parent: dict[int, bytes | None] = {}  # keyed block -> the key of the block before it
        self._depth: dict[int, int] = {}  # keyed block -> its index in its prefix chain
        self._hits: dict[int, int] = {}  # keyed block -> prefix hits since it was keyed
        self._children: Counter[bytes] = Counter()  # key -> keyed blocks whose parent it is
        # Keyed free block -> when it was freed; in release order (the clock is monotonic), so
        # the ttl policy's expired blocks are a prefix.
        self._released_at: OrderedDict[int, float] = OrderedDict()
        self.num_evictions = 0
        """Keyed blocks whose key was dropped because allocation reused them or they expired."""
        self.evictions_by_reason: Counter[str] = Counter()
        """``capacity`` (allocation reused the block) or ``ttl`` (expired)."""
        self.evicted_age_s = 0.0
        """Sum over evicted blocks of the seconds each had been free (mean age = / num_evictions)."""
        self.num_hit_blocks = 0
        """Prefix-cache hits, in blocks (`touch` calls)."""
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
        if self._ttl_s:
            self.expire()
        block_ids = []
        for _ in range(num):
            block_id = self._free.pop(self)
            key = self._key_of_block.get(block_id)
            if key is not None:
                self._drop_key(block_id, "capacity")
                if self.on_evict is not None:
                    self.on_evict(block_id, key)
            self._ref_counts[block_id] = 1
            block_ids.append(block_id)
        return block_ids

    def expire(self) -> int:
        """With the ttl policy, drop the keys of cached blocks free for longer than the ttl;
        returns how many. Called by `allocate` and, per block, by `block_of`."""
        if not self._ttl_s:
            return 0
        cutoff, num = self._clock() - self._ttl_s, 0
        while self._released_at:
            block_id, released = next(iter(self._released_at.items()))
            if released >= cutoff:
                break
            self._drop_key(block_id, "ttl")  # takes it out of _released_at
            num += 1
        return num

    def _drop_key(self, block_id: int, reason: str) -> None:
        key = self._key_of_block.pop(block_id)
        del self._block_of_key[key]
        parent = self._parent.pop(block_id)
        del self._depth[block_id]
        self._hits.pop(block_id, None)
        if parent is not None:
            self._children[parent] -= 1
            if not self._children[parent]:
                del self._children[parent]
                self._rescore(parent)
        released = self._released_at.pop(block_id, None)
        if released is not None:
            self.evicted_age_s += self._clock() - released
        self.num_evictions += 1
        self.evictions_by_reason[reason] += 1

    def _rescore(self, key: bytes) -> None:
        """The block holding ``key``, if free, may have changed rank (cost policy)."""
        block_id = self._block_of_key.get(key)
        if block_id is not None and self._ref_counts[block_id] == 0:
            self._free.changed(block_id, self)

    # -- what the eviction policy reads (`eviction.BlockFacts`) ----------------------------

    def is_keyed(self, block_id: int) -> bool:
        return block_id in self._key_of_block

    def eviction_score(self, block_id: int) -> tuple[int, int]:
        """(0 for a leaf of the prefix tree else 1, (hits + 1) x (depth + 1)); lowest goes first."""
        inner = 1 if self._children.get(self._key_of_block[block_id]) else 0
        return inner, (self._hits.get(block_id, 0) + 1) * (self._depth[block_id] + 1)

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
            if block_id in self._key_of_block:
                self._released_at[block_id] = self._clock()
            self._free.push(block_id, self)

    # -- content keys (prefix caching) ----------------------------------------------------

    def key_of(self, block_id: int) -> bytes | None:
        self._check_id(block_id)
        return self._key_of_block.get(block_id)

    def block_of(self, key: bytes) -> int | None:
        """The block holding content ``key``, in use or free; None when not cached (or, with
        the ttl policy, free past its ttl: its key is dropped now)."""
        block_id = self._block_of_key.get(key)
        if block_id is not None and self._ttl_s:
            released = self._released_at.get(block_id)
            if released is not None and self._clock() - released > self._ttl_s:
                self._drop_key(block_id, "ttl")
                return None
        return block_id

    def set_key(self, block_id: int, key: bytes, parent: bytes | None = None, depth: int = 0) -> bool:
        """Attach ``key`` to a block in use. Returns False when another block has that key.

        ``parent``: the key of the block before it in its prefix chain (None for the first),
        ``depth``: its index in the chain; the cost policy ranks by both.

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
        self._parent[block_id] = parent
        self._depth[block_id] = depth
        if parent is not None:
            self._children[parent] += 1
            if self._children[parent] == 1:
                self._rescore(parent)
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
            self._free.remove(block_id)
            self._released_at.pop(block_id, None)
        self._ref_counts[block_id] += 1
        self._hits[block_id] = self._hits.get(block_id, 0) + 1
        self.num_hit_blocks += 1

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
        assert self._parent.keys() == self._depth.keys() == self._key_of_block.keys(), f"{name}: chain facts"
        children = Counter(p for p in self._parent.values() if p is not None)
        assert children == self._children, f"{name}: child counts {dict(self._children)} != {dict(children)}"
        assert set(self._released_at) <= {b for b in self._key_of_block if self._ref_counts[b] == 0}, (
            f"{name}: release times kept for blocks in use or unkeyed")
        assert len(self._free) == sum(1 for _ in self._free), f"{name}: free queue size"
        for block_id, key in self._key_of_block.items():
            assert self._block_of_key.get(key) == block_id, (
                f"{name}: block {block_id}'s key maps to block {self._block_of_key.get(key)}"
            )

    def _check_id(self, block_id: int) -> None:
        if not 0 <= block_id < self.num_blocks:
            raise KVCacheError(
                f"block id {block_id} is out of range for a pool of {self.num_blocks} blocks"
            )

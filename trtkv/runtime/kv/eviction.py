"""Eviction policies of the device block pool's free queue: which free block allocation
reuses next, and so which cached prefix block it evicts.

A free block may still carry a prefix-cache key (it can be revived by a hit until reused).
Policies (``--prefix-eviction``):

``lru``
    One queue in release order; allocation takes the block released longest ago, cached or
    not (the default).
``ttl``
    ``lru``, and a cached block free for longer than ``ttl_s`` expires: its key is dropped,
    so it is never a hit again. Checked lazily, at allocation and at lookup (no timer), by the
    pool, from the release times it keeps.
``cost``
    Blocks without a key go first (nothing is lost); then, among cached blocks, leaves of
    the prefix tree before blocks other cached blocks extend (evicting an inner block would
    strand every block after it), and among those the cheapest to lose: score
    ``(hits + 1) x (depth + 1)`` (a block at depth d costs attention over d blocks to
    recompute, once per future hit), ties to the block released longest ago.

Each policy is a free queue over block ids with O(1) (lru, ttl) or O(log n) (cost) push,
pop and removal; `BlockPool` owns keys, ref counts and the metadata the cost score reads.
Pure Python.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol

EVICTION_POLICIES = ("lru", "ttl", "cost")


class BlockFacts(Protocol):
    """What a policy may read of the pool about a block."""

    def is_keyed(self, block_id: int) -> bool: ...
    def eviction_score(self, block_id: int) -> tuple[int, int]: ...


class FreeQueue:
    """The ``lru`` free queue: release order, oldest first."""

    name = "lru"

    def __init__(self, num_blocks: int) -> None:
        self._q: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    def __len__(self) -> int:
        return len(self._q)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._q

    def __iter__(self) -> Iterator[int]:
        """Free blocks, the next to be taken first (for checks; O(n))."""
        return iter(self._q)

    def push(self, block_id: int, facts: BlockFacts) -> None:
        """``block_id`` was released (ref count 0)."""
        self._q[block_id] = None

    def remove(self, block_id: int) -> None:
        """A free block is revived by a prefix hit."""
        del self._q[block_id]

    def pop(self, facts: BlockFacts) -> int:
        """The block allocation takes next."""
        return self._q.popitem(last=False)[0]

    def changed(self, block_id: int, facts: BlockFacts) -> None:
        """A free block's key or score changed (only the cost policy cares)."""


class CostQueue(FreeQueue):
    """Unkeyed blocks first (release order), then cached blocks by `BlockFacts.eviction_score`."""

    name = "cost"

    def __init__(self, num_blocks: int) -> None:
        self._plain: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._entry: dict[int, tuple[int, int, int]] = {}  # cached free block -> its live heap entry
        self._heap: list[tuple[int, int, int, int]] = []  # (leafness, score, release order, block)
        self._order = itertools.count()
        self._released: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._plain) + len(self._entry)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._plain or block_id in self._entry

    def __iter__(self) -> Iterator[int]:
        ranked = sorted((*e, b) for b, e in self._entry.items())
        return itertools.chain(self._plain, (b for *_, b in ranked))

    def push(self, block_id: int, facts: BlockFacts) -> None:
        self._released[block_id] = next(self._order)
        if facts.is_keyed(block_id):
            self._rank(block_id, facts)
        else:
            self._plain[block_id] = None

    def remove(self, block_id: int) -> None:
        if block_id in self._plain:
            del self._plain[block_id]
        else:
            del self._entry[block_id]  # lazy: its heap entry is skipped when reached
        self._released.pop(block_id, None)

    def pop(self, facts: BlockFacts) -> int:
        if self._plain:
            block_id = self._plain.popitem(last=False)[0]
        else:
            while True:
                *entry, block_id = heapq.heappop(self._heap)
                if self._entry.get(block_id) == tuple(entry):
                    del self._entry[block_id]
                    break
        self._released.pop(block_id, None)
        return block_id

    def changed(self, block_id: int, facts: BlockFacts) -> None:
        """A free cached block's score changed (a block extending it was keyed or evicted)."""
        if block_id in self._entry:
            self._rank(block_id, facts)

    def _rank(self, block_id: int, facts: BlockFacts) -> None:
        entry = (*facts.eviction_score(block_id), self._released[block_id])
        self._entry[block_id] = entry
        heapq.heappush(self._heap, (*entry, block_id))
        if len(self._heap) > 4 * len(self._entry) + 64:  # drop the stale entries now and then
            self._heap = [(*e, b) for b, e in self._entry.items()]
            heapq.heapify(self._heap)


def make_free_queue(policy: str, num_blocks: int) -> FreeQueue:
    """The free queue of an eviction policy (one of `EVICTION_POLICIES`); ttl keeps lru's
    order (the pool expires blocks by their release times)."""
    if policy in ("lru", "ttl"):
        return FreeQueue(num_blocks)
    if policy == "cost":
        return CostQueue(num_blocks)
    raise ValueError(f"unknown eviction policy {policy!r}; use one of {', '.join(EVICTION_POLICIES)}")

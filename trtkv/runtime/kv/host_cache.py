"""The host-memory offload tier: content-keyed copies of KV blocks in host memory, LRU.

Owns: which host block holds which content key, their LRU order, and which host blocks are
*pinned* (read or written by the plan being built, so that no later decision of the same
step may reuse them). Host blocks are numbered ``base .. base + num_blocks - 1``: they sit
after the swap tier's blocks in the backend's host pool.

Blocks arrive here when the device pool evicts a cached block (a device -> host copy in the
plan's ``swap_out``) or when a shared store returns a block (the engine writes it into the
host pool before the step runs); they go back to the device on a prefix hit (``swap_in``).
Copies, not moves: a block loaded back to the device keeps its host copy.
Pure Python; must not import torch, onnx, onnxruntime or tensorrt.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class HostCache:
    """An LRU map content key -> host block over a fixed set of host blocks.

    Args:
        num_blocks: host blocks for offloaded content (0: the tier is off).
        base: id of the first of them in the backend's host pool.
    """

    def __init__(self, num_blocks: int, base: int = 0) -> None:
        self.num_blocks = num_blocks
        self.base = base
        self._free = list(range(base + num_blocks - 1, base - 1, -1))
        self._lru: OrderedDict[bytes, int] = OrderedDict()
        self._key_of: dict[int, bytes] = {}
        self._pinned: set[int] = set()
        self.num_evictions = 0
        """Host blocks whose content was dropped to make room."""
        self.on_evict: Callable[[int, bytes], None] | None = None
        """Called with (host block, key) as a key is evicted, before its block is reused
        (the disk tier spills it)."""

    @property
    def num_used(self) -> int:
        return len(self._lru)

    def get(self, key: bytes) -> int | None:
        """The host block holding ``key`` (None when absent); no side effect."""
        return self._lru.get(key)

    def pin(self, host_block: int) -> None:
        """Keep the block for the rest of the step (a ``swap_in`` source), and mark it used."""
        self._pinned.add(host_block)
        key = self._key_of.get(host_block)
        if key is not None:
            self._lru.move_to_end(key)

    def put(self, key: bytes) -> tuple[int, bool] | None:
        """A host block for ``key``: (block, True) when the caller must fill it,
        (block, False) when the key is already here; None when every block is pinned.

        The returned block is pinned. Evicts the least recently used unpinned key if needed.
        """
        held = self._lru.get(key)
        if held is not None:
            self.pin(held)
            return held, False
        if self._free:
            block = self._free.pop()
        else:
            victim = next((k for k, b in self._lru.items() if b not in self._pinned), None)
            if victim is None:
                return None
            block = self._lru.pop(victim)
            del self._key_of[block]
            self.num_evictions += 1
            if self.on_evict is not None:
                self.on_evict(block, victim)
        self._lru[key] = block
        self._key_of[block] = key
        self._pinned.add(block)
        return block, True

    def unpin_all(self) -> None:
        """The step's plan was handed over: its block moves no longer constrain reuse."""
        self._pinned.clear()

    def check_integrity(self) -> None:
        assert len(self._lru) == len(self._key_of), "host cache: key maps disagree"
        for key, block in self._lru.items():
            assert self._key_of.get(block) == key, f"host cache: block {block} key mismatch"
        assert not set(self._free) & set(self._key_of), "host cache: a free block holds a key"
        assert len(self._free) + len(self._lru) == self.num_blocks, "host cache: blocks lost"
        ids = set(range(self.base, self.base + self.num_blocks))
        assert set(self._free) | set(self._key_of) == ids, "host cache: foreign block ids"
        assert self._pinned <= set(self._key_of), "host cache: a pinned block holds no key"

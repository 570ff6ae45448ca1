"""Offload tiers below the device pool: host memory (`HostCache`) and a shared store.

Owns: the block moves the offload tiers add to the step being planned (device -> host
copies of evicted cached blocks, host -> device loads of prefix hits), the host blocks the
engine must fill with blocks fetched from a shared store, the keys of newly computed blocks
to publish, and the tiers' counters. `KVCacheManager` drives it; the scheduler collects the
moves into the `StepPlan` with `TierQueues.take_moves`.

The shared store is reached only through `RemoteBlockSource`, a protocol: this module does
no I/O itself. Pure Python; must not import torch, onnx, onnxruntime, tensorrt or redis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from trtkv.runtime.kv.block_tables import BlockCopy
from trtkv.runtime.kv.host_cache import HostCache


class RemoteBlockSource(Protocol):
    """A shared store of KV blocks by content key (e.g. `trtkv.runtime.tiers.RedisKVStore`)."""

    def fetch(self, keys: Sequence[bytes]) -> list[object]:
        """The blocks of the longest run of ``keys`` the store holds, in order.

        Must not raise: a store that is down or slow returns [] (and logs why). Each item is
        opaque here; the engine writes it into a host block with the backend.
        """
        ...


class OffloadTier:
    """The host offload cache, the pending moves of the step, and the store hook.

    Args:
        num_blocks: host blocks for offloaded content (0: no host tier, and no store reads,
            since fetched blocks are staged in host blocks).
        base: id of the first of them in the backend's host pool (after the swap tier's).
        remote: the shared store to read from; None: none.
    """

    def __init__(self, num_blocks: int, base: int, remote: RemoteBlockSource | None = None) -> None:
        self.cache = HostCache(num_blocks, base)
        self.remote = remote
        self.swap_out: list[BlockCopy] = []
        self.swap_in: list[BlockCopy] = []
        self.host_writes: list[tuple[int, object]] = []
        self.spills: list[tuple[int, bytes]] = []
        """(host block, key) evicted from host memory, to copy to the disk tier before the
        step reuses the block (only with `spill_evicted`)."""
        self.num_offloaded = 0
        """Device blocks copied to host memory as the device pool evicted them."""
        self.num_host_hits = 0
        """Blocks loaded back from host memory on a prefix hit instead of recomputed."""
        self.num_store_hits = 0
        """Blocks fetched from the shared store into host memory."""

    @property
    def is_enabled(self) -> bool:
        return self.cache.num_blocks > 0

    def spill_evicted(self) -> None:
        """Record every host eviction in `spills` (a disk tier below host memory)."""
        self.cache.on_evict = lambda block, key: self.spills.append((block, key))

    def on_evict(self, device_block: int, key: bytes) -> None:
        """The device pool is reusing a cached block: keep its content in host memory.

        The copy joins the plan's ``swap_out``, which the backend runs before anything can
        overwrite the device block (swap_in, block copies and the forward pass come after).
        """
        got = self.cache.put(key)
        if got is not None and got[1]:
            self.swap_out.append((device_block, got[0]))
            self.num_offloaded += 1

    def load(self, host_block: int, device_block: int) -> None:
        """Copy a host hit into a fresh device block before the forward pass."""
        self.swap_in.append((host_block, device_block))
        self.num_host_hits += 1

    def stage(self, keys: Sequence[bytes], blocks: Sequence[object]) -> int:
        """Stage blocks the store returned for ``keys`` (a leading run) in host blocks, to be
        written into the backend's host pool before the next step; returns how many."""
        if not self.is_enabled:
            return 0
        num = 0
        for key, data in zip(keys, blocks, strict=False):
            got = self.cache.put(key)
            if got is None:  # every host block is in use by this step
                break
            if got[1]:
                self.host_writes.append((got[0], data))
                self.num_store_hits += 1
            num += 1
        return num

    def take_moves(self) -> tuple[list[BlockCopy], list[BlockCopy]]:
        """The (swap_out, swap_in) copies added since the last call; ends the step's pins."""
        moves = self.swap_out, self.swap_in
        self.swap_out, self.swap_in = [], []
        self.cache.unpin_all()
        return moves

    def take_host_writes(self) -> list[tuple[int, object]]:
        """(host block, data) the engine must write into the host pool before the step runs."""
        writes, self.host_writes = self.host_writes, []
        return writes

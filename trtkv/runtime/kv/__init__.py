"""Paged KV cache bookkeeping: which blocks each sequence holds. Pure Python.

Module map:
    block_pool.py: `BlockPool`, ref counts, the LRU free queue and content keys.
    manager.py: `KVCacheManager`, the facade the scheduler calls (allocate, fork, free,
        rollback, swap, prefix caching) over the modules below.
    block_tables.py: `BlockTables`, device block tables and token counts (growth with
        copy-on-write, rollback), `BlockCopy`, `ceil_div`.
    host_tier.py: `HostTier`, host blocks of swapped-out sequences (swap out / in).
    usage.py: `KVUsage`, a snapshot of block counts.
    host_cache.py: `HostCache`, the host offload tier's LRU map content key -> host block.
    offload.py: `OffloadTier` (block moves of the offload tiers, store staging, counters)
        and `RemoteBlockSource`, the protocol of a shared store.
    prefix_cache.py: `PrefixCache` (key chains, longest-prefix lookup), `hash_block`,
        `PrefixHit`.
    errors.py: `KVCacheError`, `NoFreeBlocksError` (caller misuse, not user errors).

Must not import torch, onnx, onnxruntime or tensorrt.
"""

from __future__ import annotations

from trtkv.runtime.kv.block_pool import BlockPool
from trtkv.runtime.kv.block_tables import BlockCopy
from trtkv.runtime.kv.errors import KVCacheError, NoFreeBlocksError
from trtkv.runtime.kv.manager import KVCacheManager
from trtkv.runtime.kv.offload import RemoteBlockSource
from trtkv.runtime.kv.prefix_cache import PrefixHit, hash_block
from trtkv.runtime.kv.usage import KVUsage

__all__ = [
    "BlockCopy",
    "BlockPool",
    "KVCacheError",
    "KVCacheManager",
    "KVUsage",
    "NoFreeBlocksError",
    "PrefixHit",
    "RemoteBlockSource",
    "hash_block",
]

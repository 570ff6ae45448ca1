"""Paged KV cache bookkeeping: which blocks each sequence holds. Pure Python.

Module map:
    block_pool.py: `BlockPool`, ref counts, the LRU free queue and content keys.
    manager.py: `KVCacheManager`, the one owner of block tables (fork, copy-on-write,
        rollback, swap to the host tier), and `KVUsage`.
    errors.py: `KVCacheError`, `NoFreeBlocksError` (caller misuse, not user errors).

Must not import torch, onnx, onnxruntime or tensorrt.
"""

from __future__ import annotations

from trtkv.runtime.kv.block_pool import BlockPool
from trtkv.runtime.kv.errors import KVCacheError, NoFreeBlocksError
from trtkv.runtime.kv.manager import BlockCopy, KVCacheManager, KVUsage

__all__ = [
    "BlockCopy",
    "BlockPool",
    "KVCacheError",
    "KVCacheManager",
    "KVUsage",
    "NoFreeBlocksError",
]

"""KV tiers below the device pool that need I/O: block serialization and the Redis store.

Module map:
    block_codec.py: `BlockFormat` (a block's bytes + self-describing header), `model_fingerprint`.
    redis_store.py: `RedisKVStore`, the shared store (background publishing, TTL, size
        bound, down/slow store degrades to local KV).
    transfer.py: `TierTransfer`, the engine's glue between the KV manager's offload tier,
        the backend's block I/O and the store; `create_tiers`.

The bookkeeping (which block lives where) is pure Python in `trtkv.runtime.kv`.
"""

from __future__ import annotations

from trtkv.runtime.tiers.block_codec import BlockFormat, model_fingerprint
from trtkv.runtime.tiers.redis_store import RedisKVStore
from trtkv.runtime.tiers.transfer import TierTransfer

__all__ = ["BlockFormat", "RedisKVStore", "TierTransfer", "model_fingerprint"]

"""The engine's glue between the KV manager's offload tier, the backend and the shared store.

Owns: moving block *data* that the plan's block moves cannot express: blocks fetched from
the store are written into the backend's host pool after scheduling and before the step runs
(the plan's ``swap_in`` then loads them), and blocks the step filled are read from the device
pool after it ran and handed to the store's publisher thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from trtkv.runtime.backends.base import BaseBackend
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.kv.manager import KVCacheManager
from trtkv.runtime.tiers.block_codec import BlockFormat, model_fingerprint
from trtkv.runtime.tiers.redis_store import RedisKVStore

log = logging.getLogger("trtkv.kv_store")


def create_store(model_dir: Path, config: EngineConfig, backend: BaseBackend) -> RedisKVStore | None:
    """The shared store of ``config.kv_store_url`` for this backend, or None (no URL, or a
    backend without block I/O, which is logged)."""
    if not config.kv_store_url:
        return None
    if not backend.supports_block_io:
        log.warning("the %s backend cannot read/write KV blocks: --kv-store-url is ignored",
                    type(backend).__name__)
        return None
    m, bs = backend.manifest, backend.block_size
    dtype = backend.read_blocks([0]).dtype
    fmt = BlockFormat.create(model_fingerprint(model_dir, m, bs), m, bs, dtype)
    max_blocks = int(config.kv_store_max_gib * 2**30) // fmt.num_bytes
    return RedisKVStore(config.kv_store_url, fmt, ttl_s=config.kv_store_ttl_s,
                        max_blocks=max_blocks, timeout_s=config.kv_store_timeout_s)


class TierTransfer:
    """Moves block data between the backend and the store around each step."""

    def __init__(self, kv: KVCacheManager, backend: BaseBackend, store: RedisKVStore | None) -> None:
        self.kv, self.backend, self.store = kv, backend, store
        if store is not None:
            kv.track_new_blocks()

    def stage(self) -> None:
        """Write the blocks the store returned at admission into their host blocks."""
        writes = self.kv.take_host_writes()
        if writes:
            ids = [host_block for host_block, _ in writes]
            self.backend.write_host_blocks(ids, np.stack([np.asarray(d) for _, d in writes]))

    def publish(self) -> None:
        """Hand the blocks the last step filled to the store (a copy; sent in the background)."""
        new = self.kv.take_new_blocks()
        if not new or self.store is None:
            return
        data = self.backend.read_blocks([block_id for block_id, _ in new])
        for (_, key), block in zip(new, data, strict=True):
            self.store.publish(key, block)

    def stats(self) -> dict[str, Any]:
        return self.store.stats() if self.store is not None else {}

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

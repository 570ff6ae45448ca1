"""The engine's glue between the KV manager's offload tier, the backend, the disk tier and
the shared store.

Owns: moving block *data* that the plan's block moves cannot express, and every file and
network call of the disk and store tiers, none of which runs inside `Scheduler.schedule()`:

- a new request's lookup: the engine hands its prompt to `prefetch` when it is added; a
  background thread reads the blocks past the local (device + host) hit from the disk tier,
  then asks the store for the rest, while the engine keeps stepping (the request waits in the
  queue meanwhile: `pending`); `collect`, before the next schedule, stages what came back in
  host blocks;
- blocks host memory evicted (the disk tier's input) are read from the host pool after
  scheduling, before the step can reuse their host blocks, and written to disk;
- staged blocks are written into the backend's host pool after that and before the step runs
  (the plan's ``swap_in`` then loads them);
- blocks the step filled are read from the device pool after it ran and handed to the
  store's publisher thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtkv.errors import ConfigError
from trtkv.runtime.backends.base import BaseBackend
from trtkv.runtime.config import StoreConfig
from trtkv.runtime.kv.manager import KVCacheManager
from trtkv.runtime.tiers.block_codec import BlockFormat, model_fingerprint
from trtkv.runtime.tiers.disk_store import DiskKVStore
from trtkv.runtime.tiers.redis_store import RedisKVStore

log = logging.getLogger("trtkv.kv_store")


def create_store(model_dir: Path, config: StoreConfig, backend: BaseBackend) -> RedisKVStore | None:
    """The shared store of ``config.url`` for this backend, or None (no URL, or a backend
    without block I/O, which is logged)."""
    if not config.url:
        return None
    if not backend.supports_block_io:
        log.warning("the %s backend cannot read/write KV blocks: --kv-store-url is ignored",
                    type(backend).__name__)
        return None
    m, bs = backend.manifest, backend.block_size
    dtype = backend.read_blocks([0]).dtype
    fmt = BlockFormat.create(model_fingerprint(model_dir, m, bs), m, bs, dtype)
    max_blocks = int(config.max_gib * 2**30) // fmt.num_bytes
    return RedisKVStore(config.url, fmt, ttl_s=config.ttl_s, max_blocks=max_blocks, timeout_s=config.timeout_s)


def create_disk_store(model_dir: Path, config: StoreConfig, backend: BaseBackend) -> DiskKVStore | None:
    """The disk tier of ``config.disk_dir`` for this backend, or None (no directory, or a
    backend without block I/O, which is logged).

    Raises:
        ConfigError: the directory cannot be created or read.
    """
    if not config.disk_dir:
        return None
    if not backend.supports_block_io:
        log.warning("the %s backend cannot read/write KV blocks: --kv-disk-dir is ignored", type(backend).__name__)
        return None
    m, bs = backend.manifest, backend.block_size
    fmt = BlockFormat.create(model_fingerprint(model_dir, m, bs), m, bs, backend.read_blocks([0]).dtype)
    try:
        return DiskKVStore(config.disk_dir, fmt, int(config.disk_gib * 2**30))
    except OSError as exc:
        raise ConfigError(f"--kv-disk-dir {config.disk_dir}: {exc.strerror or exc}; give a writable directory") from None


class TierTransfer:
    """Moves block data between the backend and the store around each step."""

    def __init__(self, kv: KVCacheManager, backend: BaseBackend, store: RedisKVStore | None,
                 disk: DiskKVStore | None = None) -> None:
        self.kv, self.backend, self.store, self.disk = kv, backend, store, disk
        self.pending: set[str] = set()
        """Requests whose store lookup is in flight (the scheduler does not admit them yet)."""
        self._jobs: queue.Queue[tuple[str, list[bytes]] | None] = queue.Queue()
        self._done: queue.Queue[tuple[str, list[bytes], list[object]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        if store is not None:
            kv.tiers.track_new_blocks()
        if disk is not None:
            kv.tiers.spill_evicted()
        if store is not None or disk is not None:
            self._thread = threading.Thread(target=self._fetch_loop, name="trtkv-kv-prefetch", daemon=True)
            self._thread.start()

    def prefetch(self, request_id: str, token_ids: Sequence[int], cache_salt: str | None) -> None:
        """A request was added: look its blocks past the local hit up in the store, in the
        background. Engine thread."""
        keys = self.kv.tiers.remote_keys(token_ids, cache_salt) if self._thread is not None else []
        if keys:
            self.pending.add(request_id)
            self._jobs.put((request_id, keys))

    def forget(self, request_id: str) -> None:
        """The request left (aborted): do not wait for its lookup (its blocks still get staged)."""
        self.pending.discard(request_id)

    def collect(self, wait_s: float = 0.0) -> None:
        """Stage the finished lookups' blocks in host blocks; call before scheduling. With
        ``wait_s``, wait that long for one lookup first (the engine has nothing else to do)."""
        try:
            item = self._done.get(timeout=wait_s) if wait_s > 0 and self.pending else self._done.get_nowait()
        except queue.Empty:
            return
        while True:
            request_id, keys, blocks = item
            self.kv.tiers.stage_remote(keys, blocks)
            self.pending.discard(request_id)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                return

    def _fetch_loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            request_id, keys = job
            self._done.put((request_id, keys, self._fetch(keys)))

    def _fetch(self, keys: list[bytes]) -> list[object]:
        """The leading run of ``keys`` found: on disk first, then the rest in the store (each
        never raises)."""
        blocks = self.disk.fetch(keys) if self.disk is not None else []
        if self.store is not None and len(blocks) < len(keys):
            blocks += self.store.fetch(keys[len(blocks):])
        return blocks

    def stage(self) -> None:
        """After scheduling, before the step: spill the blocks host memory evicted to disk
        (their host blocks still hold them), then write the blocks `collect` staged into
        their host blocks."""
        spills = self.kv.tiers.take_spills()
        if spills and self.disk is not None:
            data = self.backend.read_host_blocks([host_block for host_block, _ in spills])
            for (_, key), block in zip(spills, data, strict=True):
                self.disk.put(key, block)
        writes = self.kv.tiers.take_host_writes()
        if writes:
            ids = [host_block for host_block, _ in writes]
            self.backend.write_host_blocks(ids, np.stack([np.asarray(d) for _, d in writes]))

    def publish(self) -> None:
        """Hand the blocks the last step filled to the store (a copy; sent in the background)."""
        new = self.kv.tiers.take_new_blocks()
        if not new or self.store is None:
            return
        data = self.backend.read_blocks([block_id for block_id, _ in new])
        for (_, key), block in zip(new, data, strict=True):
            self.store.publish(key, block)

    def stats(self) -> dict[str, Any]:
        """The store's stats, and the disk tier's under ``disk``."""
        out = self.store.stats() if self.store is not None else {}
        if self.disk is not None:
            out["disk"] = self.disk.stats()
        return out

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=5)
        if self.store is not None:
            self.store.close()

"""The shared KV store tier on Redis: blocks published by content key, read by any engine.

Owns: the Redis connection, the background publisher thread and its bounded queue, the
store's size bound (an index sorted set per namespace; the oldest blocks are dropped past
``max_blocks``), TTLs, and the down/slow handling: every Redis error or timeout is logged
as a warning and turns the store off for ``retry_after_s`` (reads miss, writes are
dropped), so a store that is down or slow costs at most one timeout, never a request.

Implements `trtkv.runtime.kv.offload.RemoteBlockSource` (``fetch``). Imports ``redis``
lazily (the ``store`` extra).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from trtkv._optional import require
from trtkv.errors import ConfigError
from trtkv.runtime.tiers.block_codec import BlockFormat

log = logging.getLogger("trtkv.kv_store")


class RedisKVStore:
    """KV blocks in Redis under ``format.namespace + key.hex()``.

    Args:
        url: ``redis://host:port/db``.
        fmt: the engine's block format (fingerprint, dtype, layout, scales).
        ttl_s: each published block expires after this many seconds.
        max_blocks: most blocks kept per namespace (0: no bound but the TTL).
        timeout_s: socket connect / read timeout of each Redis call.
        retry_after_s: after an error, the store is skipped for this long.
        max_queue: most blocks waiting to be published; more are dropped.

    Raises:
        MissingExtraError: the ``redis`` package is missing (the ``store`` extra).
        ConfigError: the URL is malformed.
    """

    def __init__(self, url: str, fmt: BlockFormat, *, ttl_s: float = 3600.0, max_blocks: int = 0,
                 timeout_s: float = 0.1, retry_after_s: float = 2.0, max_queue: int = 1024) -> None:
        redis = require("redis", "store", "--kv-store-url")
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        try:
            self._client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0), health_check_interval=0,
            )
        except ValueError as exc:
            raise ConfigError(f"--kv-store-url {url!r} is not a Redis URL ({exc}); "
                              "use redis://HOST:PORT/DB") from exc
        self.url, self.fmt = url, fmt
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.max_blocks = max_blocks
        self.retry_after_s = retry_after_s
        self._index = fmt.namespace + "index"
        self._queue: queue.Queue[tuple[bytes, np.ndarray] | None] = queue.Queue(max_queue)
        self._failed_at = -float("inf")
        self._lock = threading.Lock()
        self._pending = 0
        self.counters = dict.fromkeys(
            ("fetch_queries", "fetch_hit_blocks", "fetch_rejected", "published_blocks",
             "dropped_blocks", "errors"), 0)
        self._thread = threading.Thread(target=self._publish_loop, name="trtkv-kv-store",
                                        daemon=True)
        self._thread.start()

    # -- reads (engine thread, at admission) -----------------------------------------------

    def fetch(self, keys: Sequence[bytes]) -> list[object]:
        """Blocks for the longest run of ``keys`` the store holds with this engine's format.

        Never raises: on an error or timeout it logs a warning and returns [].
        """
        if not keys or self.is_down:
            return []
        self.counters["fetch_queries"] += 1
        try:
            payloads: list[Any] = list(self._client.mget([self._name(k) for k in keys]))
        except Exception as exc:  # noqa: BLE001 - any store failure degrades to a miss
            self._mark_down("read", exc)
            return []
        blocks: list[object] = []
        for key, payload in zip(keys, payloads, strict=True):
            block = self.fmt.decode(key, payload) if payload is not None else None
            if block is None:
                if payload is not None:
                    self.counters["fetch_rejected"] += 1
                    log.warning("KV store: block %s under %s failed its header or digest check (another "
                                "format, or corrupted in the store); recomputing it", key.hex()[:16], self.fmt.namespace)
                break
            blocks.append(block)
        self.counters["fetch_hit_blocks"] += len(blocks)
        return blocks

    # -- writes (background thread) --------------------------------------------------------

    def publish(self, key: bytes, block: np.ndarray) -> None:
        """Queue a block ([L, 2, B, Hkv, D], a copy the caller no longer changes) for
        publishing; returns at once. Dropped when the queue is full or the store is down."""
        if self.is_down:
            self.counters["dropped_blocks"] += 1
            return
        with self._lock:
            self._pending += 1
        try:
            self._queue.put_nowait((key, block))
        except queue.Full:
            with self._lock:
                self._pending -= 1
            self.counters["dropped_blocks"] += 1

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait until every queued block was published (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending == 0:
                    return True
            time.sleep(0.005)
        return False

    def close(self, timeout_s: float = 2.0) -> None:
        """Publish what is queued (up to ``timeout_s``), then stop the thread."""
        self.flush(timeout_s)
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._client.close()

    def _publish_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < 64:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                if not self.is_down:
                    self._publish(batch)
                else:
                    self.counters["dropped_blocks"] += len(batch)
            except Exception as exc:  # noqa: BLE001 - any store failure degrades to a warning
                self.counters["dropped_blocks"] += len(batch)
                self._mark_down("write", exc)
            finally:
                with self._lock:
                    self._pending -= len(batch)

    def _publish(self, batch: list[tuple[bytes, np.ndarray]]) -> None:
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        for key, block in batch:
            name = self._name(key)
            pipe.set(name, self.fmt.encode(key, block), px=self.ttl_ms)
            pipe.zadd(self._index, {name: now})
        pipe.pexpire(self._index, self.ttl_ms)
        pipe.zcard(self._index)
        num = int(pipe.execute()[-1])
        self.counters["published_blocks"] += len(batch)
        if self.max_blocks and num > self.max_blocks:
            oldest: Any = self._client.zpopmin(self._index, num - self.max_blocks)
            if oldest:
                self._client.delete(*[pair[0] for pair in oldest])

    # -- health ----------------------------------------------------------------------------

    @property
    def is_down(self) -> bool:
        return time.monotonic() - self._failed_at < self.retry_after_s

    def _mark_down(self, what: str, exc: BaseException) -> None:
        self.counters["errors"] += 1
        if not self.is_down:
            log.warning("KV store %s: %s failed (%s: %s); serving from local KV only for %.1f s",
                        self.url, what, type(exc).__name__, exc, self.retry_after_s)
        self._failed_at = time.monotonic()

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "is_down": self.is_down, "queued": self._queue.qsize()}

    def _name(self, key: bytes) -> str:
        return self.fmt.namespace + key.hex()

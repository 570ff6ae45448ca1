"""The local disk KV tier: blocks evicted from host memory kept in files, for prefix hits.

Between host memory and the shared store: larger than RAM, cheaper than recomputing a long
shared prefix, slower than RAM. One file per block, ``DIR/<model fingerprint>/<key hex>.kvb``,
in the `BlockFormat` wire format (header + BLAKE2b digest + raw block), written to a
temporary name and renamed, so a reader sees a whole file or none. A file that is truncated,
corrupt, or of another model, KV dtype, scales or layout reads as a miss and is removed;
nothing is ever served unchecked.

Bounded by ``max_bytes`` with its own LRU (file mtime, refreshed on a hit). The index is
rebuilt from the directory at start, so the blocks survive a restart of the server for the
same model fingerprint (another fingerprint lives in another directory). A disk that is full
or read-only turns writing off (logged once, counted) and the tier degrades to what it
holds, then to recompute; reads never raise.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtkv.runtime.kv.prefix_cache import KEY_BYTES
from trtkv.runtime.tiers.block_codec import BlockFormat

log = logging.getLogger("trtkv.kv_disk")

SUFFIX = ".kvb"
_TMP_PREFIX = ".tmp-"


class DiskKVStore:
    """Content-keyed KV blocks in files under one directory; see the module docstring.

    Args:
        directory: the tier's root (created if missing); blocks go to a per-fingerprint
            subdirectory.
        fmt: this engine's block format (its fingerprint names the subdirectory).
        max_bytes: most bytes of block files kept; the least recently used go first.

    Raises:
        OSError: the directory cannot be created or listed.
    """

    def __init__(self, directory: str | Path, fmt: BlockFormat, max_bytes: int) -> None:
        self.fmt = fmt
        self.dir = Path(directory) / fmt.fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file_bytes = len(fmt.encode(b"\0" * KEY_BYTES, np.zeros(fmt.shape, fmt.dtype)))
        self.max_files = max(0, max_bytes // self.file_bytes)
        self._lru: OrderedDict[bytes, None] = OrderedDict()
        self._tmp = itertools.count()
        self.writable = self.max_files > 0
        self.counts = {"hits": 0, "misses": 0, "corrupt": 0, "writes": 0, "write_errors": 0, "evictions": 0}
        self._scan()

    # -- index ----------------------------------------------------------------------------
    def _scan(self) -> None:
        """Rebuild the index from the files on disk (oldest first); drop torn temporaries."""
        found = []
        for entry in os.scandir(self.dir):
            if entry.name.startswith(_TMP_PREFIX):
                self._unlink(Path(entry.path))
                continue
            if not entry.name.endswith(SUFFIX):
                continue
            try:
                key = bytes.fromhex(entry.name[: -len(SUFFIX)])
                found.append((entry.stat().st_mtime_ns, key))
            except (ValueError, OSError):
                continue
        for _, key in sorted(found):
            self._lru[key] = None
        self._evict_over_budget()

    def _path(self, key: bytes) -> Path:
        return self.dir / f"{key.hex()}{SUFFIX}"

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    # -- reads ----------------------------------------------------------------------------
    def fetch(self, keys: Sequence[bytes]) -> list[object]:
        """The blocks of the longest leading run of ``keys`` held here and intact, in order.
        Never raises."""
        out: list[object] = []
        for key in keys:
            block = self._read(key) if key in self._lru else None
            if block is None:
                self.counts["misses"] += 1
                break
            out.append(block)
            self.counts["hits"] += 1
        return out

    def _read(self, key: bytes) -> np.ndarray | None:
        path = self._path(key)
        try:
            with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                block = self.fmt.decode(key, mm[:])
        except (OSError, ValueError):
            block = None
        if block is None:  # gone, truncated, corrupt or another format: a miss, never served
            self.counts["corrupt"] += 1
            self._lru.pop(key, None)
            self._unlink(path)
            return None
        self._lru.move_to_end(key)
        try:
            os.utime(path)  # the LRU order survives a restart
        except OSError:
            pass
        return block.copy()

    # -- writes ---------------------------------------------------------------------------
    def put(self, key: bytes, block: np.ndarray) -> bool:
        """Keep ``block`` ([L, 2, B, Hkv, D], pool dtype) under ``key``; False when it was
        not written (writing is off: the disk was full or read-only)."""
        if key in self._lru:
            self._lru.move_to_end(key)
            return True
        if not self.writable:
            return False
        data = self.fmt.encode(key, block)
        tmp = self.dir / f"{_TMP_PREFIX}{os.getpid()}-{next(self._tmp)}"
        try:
            with tmp.open("wb") as f:
                f.write(data)
            os.replace(tmp, self._path(key))
        except OSError as exc:
            self._unlink(tmp)
            self.writable = False
            self.counts["write_errors"] += 1
            log.warning("the KV disk tier cannot write to %s (%s); it keeps serving the %d blocks it "
                        "holds and stops writing", self.dir, exc.strerror or exc, len(self._lru))
            return False
        self._lru[key] = None
        self.counts["writes"] += 1
        self._evict_over_budget()
        return True

    def _evict_over_budget(self) -> None:
        while len(self._lru) > self.max_files:
            key, _ = self._lru.popitem(last=False)
            self._unlink(self._path(key))
            self.counts["evictions"] += 1

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "blocks": len(self._lru), "max_blocks": self.max_files,
                "bytes": len(self._lru) * self.file_bytes, "writable": self.writable}


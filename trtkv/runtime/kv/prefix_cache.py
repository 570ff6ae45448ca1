"""Prefix caching: content keys of full blocks, chained, and the longest-prefix lookup.

Owns: each sequence's key chain (the content key of each of its full, computed blocks) and
its cache salt. A block's key hashes its parent block's key, its token ids and, for the
first block, the salt, with BLAKE2b over a fixed little-endian encoding, so keys are equal
across processes and machines (never Python's ``hash()``). The `BlockPool` owns the
key <-> block map; this module decides which keys exist and when blocks get them.

Pure Python; must not import torch, onnx, onnxruntime or tensorrt.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from trtkv.runtime.kv.block_pool import BlockPool
from trtkv.runtime.kv.host_cache import HostCache

KEY_BYTES = 16


def hash_block(parent_key: bytes | None, token_ids: Sequence[int], cache_salt: str | None) -> bytes:
    """The content key of a full block.

    Args:
        parent_key: key of the previous block of the sequence; None for the first block.
        token_ids: the block's token ids (exactly block_size of them).
        cache_salt: namespace of the first block (e.g. a tenant); ignored for later blocks,
            which inherit it through ``parent_key``.
    """
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    if parent_key is None:
        salt = (cache_salt or "").encode()
        h.update(b"root" + struct.pack("<?Q", cache_salt is not None, len(salt)) + salt)
    else:
        h.update(b"next" + parent_key)
    h.update(struct.pack(f"<{len(token_ids)}q", *token_ids))
    return h.digest()


@dataclass(frozen=True)
class PrefixHit:
    """The cached blocks found for a token sequence: pass it to `KVCacheManager.allocate`.

    The first ``len(block_ids)`` of ``keys`` are in the device pool (``block_ids``); the
    rest are in the host offload tier (``host_block_ids``) and are loaded into fresh device
    blocks when the sequence is allocated.
    """

    block_ids: tuple[int, ...] = ()
    keys: tuple[bytes, ...] = ()
    cache_salt: str | None = None
    host_block_ids: tuple[int, ...] = ()

    @property
    def num_blocks(self) -> int:
        """Blocks hit in any tier (their tokens need no compute)."""
        return len(self.keys)

    @property
    def num_device_blocks(self) -> int:
        return len(self.block_ids)


def iter_block_keys(token_ids: Sequence[int], block_size: int, cache_salt: str | None,
                    parent: bytes | None = None, first: int = 0) -> Iterator[bytes]:
    """Keys of the full blocks ``first ..`` of ``token_ids``, never covering its last token.

    Args:
        parent: the key of block ``first - 1`` (None when ``first`` is 0).
    """
    for i in range(first, (len(token_ids) - 1) // block_size):
        parent = hash_block(parent, token_ids[i * block_size : (i + 1) * block_size], cache_salt)
        yield parent


class PrefixCache:
    """Key chains of the sequences of one `KVCacheManager` over its device `BlockPool`."""

    def __init__(self, pool: BlockPool, block_size: int) -> None:
        self._pool = pool
        self._block_size = block_size
        self._chains: dict[int, list[bytes]] = {}
        self._salts: dict[int, str | None] = {}
        self.new_blocks: list[tuple[int, bytes]] | None = None
        """When a list: every (block, key) keyed by `cache`, for publishing to a store."""

    def lookup(self, token_ids: Sequence[int], cache_salt: str | None,
               host: HostCache | None = None,
               block_keys: Sequence[bytes] | None = None) -> PrefixHit:
        """Longest run of cached full blocks at the start of ``token_ids``: device blocks
        first, then (after the first device miss) blocks in the ``host`` tier.

        Stops one token short of the end: the last token is always computed, so that the
        step that finishes the prefill has logits to sample from. ``block_keys``, when
        given, are the keys `iter_block_keys` yields for ``token_ids`` (not hashed again).
        """
        block_ids: list[int] = []
        host_ids: list[int] = []
        keys: list[bytes] = []
        # Without known keys, hash lazily: the first miss stops the hashing.
        candidates: Iterable[bytes] = (
            iter_block_keys(token_ids, self._block_size, cache_salt)
            if block_keys is None else block_keys
        )
        for key in candidates:
            block_id = None if host_ids else self._pool.block_of(key)
            if block_id is not None:
                block_ids.append(block_id)
            else:
                host_block = host.get(key) if host is not None else None
                if host_block is None:
                    break
                host_ids.append(host_block)
            keys.append(key)
        return PrefixHit(tuple(block_ids), tuple(keys), cache_salt, tuple(host_ids))

    def start(self, seq_id: int, hit: PrefixHit) -> None:
        """A new sequence begins with the blocks of ``hit`` (already referenced)."""
        self._chains[seq_id] = list(hit.keys)
        self._salts[seq_id] = hit.cache_salt

    def cache(self, seq_id: int, table: Sequence[int], token_ids: Sequence[int],
              num_computed: int, block_keys: Sequence[bytes] = ()) -> None:
        """Key every full block among the first ``num_computed`` tokens that has no key yet.

        A block whose content is already cached in another block stays unkeyed; the chain
        still records the key so that later blocks hash correctly. ``block_keys`` are known
        keys of the first blocks of ``token_ids`` (same salt), used instead of hashing.
        """
        chain = self._chains.get(seq_id)
        if chain is None:
            return
        bs = self._block_size
        parent = chain[-1] if chain else None
        for i in range(len(chain), num_computed // bs):
            if i < len(block_keys):
                key = block_keys[i]
            else:
                key = hash_block(parent, token_ids[i * bs : (i + 1) * bs], self._salts[seq_id])
            chain.append(key)
            if self._pool.set_key(table[i], key, parent, i) and self.new_blocks is not None:
                self.new_blocks.append((table[i], key))
            parent = key

    def fork(self, parent_seq_id: int, child_seq_id: int) -> None:
        if parent_seq_id in self._chains:
            self._chains[child_seq_id] = list(self._chains[parent_seq_id])
            self._salts[child_seq_id] = self._salts[parent_seq_id]

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        chain = self._chains.get(seq_id)
        if chain is not None:
            del chain[num_tokens // self._block_size :]

    def restore(self, seq_id: int, table: Sequence[int]) -> None:
        """Re-key a sequence's fresh device blocks after a swap-in, where not taken."""
        chain = self._chains.get(seq_id, [])
        for i, (block_id, key) in enumerate(zip(table, chain, strict=False)):
            self._pool.set_key(block_id, key, chain[i - 1] if i else None, i)

    def forget(self, seq_id: int) -> None:
        self._chains.pop(seq_id, None)
        self._salts.pop(seq_id, None)

    def check_integrity(self, tables: dict[int, list[int]], num_tokens: dict[int, int],
                        live: set[int]) -> None:
        """Assert chains fit their sequences and agree with the keys their blocks carry."""
        stale = self._chains.keys() - live
        assert not stale, f"key chains kept for unknown seqs {sorted(stale)}"
        for seq_id, chain in self._chains.items():
            assert len(chain) <= num_tokens[seq_id] // self._block_size, (
                f"seq {seq_id} has {len(chain)} keyed blocks but {num_tokens[seq_id]} tokens"
            )
            for block_id, key in zip(tables.get(seq_id, ()), chain, strict=False):
                held = self._pool.key_of(block_id)
                assert held is None or held == key, (
                    f"seq {seq_id}: block {block_id} carries a key that differs from its content"
                )

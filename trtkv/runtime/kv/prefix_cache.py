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
from collections.abc import Sequence
from dataclasses import dataclass

from trtkv.runtime.kv.block_pool import BlockPool

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
    """The cached blocks found for a token sequence: pass it to `KVCacheManager.allocate`."""

    block_ids: tuple[int, ...] = ()
    keys: tuple[bytes, ...] = ()
    cache_salt: str | None = None

    @property
    def num_blocks(self) -> int:
        return len(self.block_ids)


class PrefixCache:
    """Key chains of the sequences of one `KVCacheManager` over its device `BlockPool`."""

    def __init__(self, pool: BlockPool, block_size: int) -> None:
        self._pool = pool
        self._block_size = block_size
        self._chains: dict[int, list[bytes]] = {}
        self._salts: dict[int, str | None] = {}

    def lookup(self, token_ids: Sequence[int], cache_salt: str | None) -> PrefixHit:
        """Longest run of cached full blocks at the start of ``token_ids``.

        Stops one token short of the end: the last token is always computed, so that the
        step that finishes the prefill has logits to sample from.
        """
        bs = self._block_size
        block_ids: list[int] = []
        keys: list[bytes] = []
        parent: bytes | None = None
        for i in range((len(token_ids) - 1) // bs):
            key = hash_block(parent, token_ids[i * bs : (i + 1) * bs], cache_salt)
            block_id = self._pool.block_of(key)
            if block_id is None:
                break
            block_ids.append(block_id)
            keys.append(key)
            parent = key
        return PrefixHit(tuple(block_ids), tuple(keys), cache_salt)

    def start(self, seq_id: int, hit: PrefixHit) -> None:
        """A new sequence begins with the blocks of ``hit`` (already referenced)."""
        self._chains[seq_id] = list(hit.keys)
        self._salts[seq_id] = hit.cache_salt

    def cache(self, seq_id: int, table: Sequence[int], token_ids: Sequence[int],
              num_computed: int) -> None:
        """Key every full block among the first ``num_computed`` tokens that has no key yet.

        A block whose content is already cached in another block stays unkeyed; the chain
        still records the key so that later blocks hash correctly.
        """
        chain = self._chains.get(seq_id)
        if chain is None:
            return
        bs = self._block_size
        parent = chain[-1] if chain else None
        for i in range(len(chain), num_computed // bs):
            parent = hash_block(parent, token_ids[i * bs : (i + 1) * bs], self._salts[seq_id])
            chain.append(parent)
            self._pool.set_key(table[i], parent)

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
        for block_id, key in zip(table, self._chains.get(seq_id, ()), strict=False):
            self._pool.set_key(block_id, key)

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

"""Prefix caching in the KV manager: stable keys, lookup, hits, eviction, salts, CoW."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trtkv.runtime.kv import KVCacheError, KVCacheManager, hash_block

TOKENS = list(range(100, 110))  # 10 tokens: 2 full blocks of 4 and a partial one


def cached_seq(kv: KVCacheManager, seq_id: int, tokens: list[int], salt: str | None = None) -> None:
    kv.allocate(seq_id, len(tokens), kv.lookup_prefix(tokens, salt))
    kv.cache_blocks(seq_id, tokens, len(tokens))
    kv.check_integrity()


def test_keys_are_stable_across_processes_and_chain() -> None:
    key = hash_block(None, [1, 2, 3, 4], None)
    code = ("from trtkv.runtime.kv import hash_block; "
            "print(hash_block(None, [1, 2, 3, 4], None).hex())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=env).stdout.strip()
    assert out == key.hex()
    assert hash_block(None, [1, 2, 3, 4], "tenant") != key
    assert hash_block(None, [1, 2, 3, 4], "") != key, "an empty salt is not the absent salt"
    assert hash_block(key, [5, 6, 7, 8], None) != hash_block(None, [5, 6, 7, 8], None)
    assert hash_block(key, [5, 6, 7, 8], "a") == hash_block(key, [5, 6, 7, 8], "b"), (
        "only the first block hashes the salt; later blocks inherit it through the parent"
    )


def test_lookup_finds_full_blocks_and_leaves_the_last_token() -> None:
    kv = KVCacheManager(8, 4, enable_prefix_caching=True)
    cached_seq(kv, 1, TOKENS)
    table = kv.block_ids(1)
    assert kv.block_key(table[0]) == hash_block(None, TOKENS[:4], None)
    assert kv.block_key(table[2]) is None, "a partial block is never keyed"
    assert kv.lookup_prefix(TOKENS).block_ids == table[:2]
    assert kv.lookup_prefix(TOKENS[:9]).block_ids == table[:2]
    assert kv.lookup_prefix(TOKENS[:8]).block_ids == table[:1], "last token is computed"
    assert kv.lookup_prefix([7, *TOKENS[1:]]).block_ids == ()
    assert kv.lookup_prefix(TOKENS, "other-salt").block_ids == ()


def test_hit_shares_blocks_and_revives_freed_ones() -> None:
    kv = KVCacheManager(8, 4, enable_prefix_caching=True)
    cached_seq(kv, 1, TOKENS)
    table = kv.block_ids(1)
    cached_seq(kv, 2, TOKENS)
    assert kv.block_ids(2)[:2] == table[:2] and kv.block_ids(2)[2] != table[2]
    assert [kv.ref_count(b) for b in table] == [2, 2, 1]
    kv.free(1)
    kv.free(2)
    assert kv.usage().num_used == 0 and kv.usage().num_cached == 2
    hit = kv.lookup_prefix(TOKENS)
    assert kv.can_allocate(3, 10, hit)
    kv.allocate(3, 10, hit)
    assert kv.block_ids(3)[:2] == table[:2] and kv.usage().num_used == 3
    assert not kv._pool.is_free(table[0])
    kv.check_integrity()


def test_eviction_drops_keys_lru_first() -> None:
    kv = KVCacheManager(4, 4, enable_prefix_caching=True)
    cached_seq(kv, 1, TOKENS)  # blocks a, b keyed; c partial
    kv.free(1)
    kv.allocate(2, 4)  # takes the never-used block first
    assert kv.usage().num_evictions == 0
    kv.allocate(3, 4)  # then the partial block freed first (tail first), then b, then a
    kv.allocate(4, 4)
    assert kv.usage().num_evictions == 1
    assert kv.lookup_prefix(TOKENS).num_blocks == 1, "the first block is evicted last"
    kv.check_integrity()


def test_can_allocate_counts_revived_blocks() -> None:
    kv = KVCacheManager(3, 4, enable_prefix_caching=True)
    cached_seq(kv, 1, TOKENS[:9])  # 3 blocks, 2 keyed
    kv.free(1)
    hit = kv.lookup_prefix(TOKENS[:9])
    assert hit.num_blocks == 2
    assert kv.can_allocate(2, 9, hit) and not kv.can_allocate(2, 13, hit)
    kv.allocate(2, 4)  # takes the free unkeyed block
    assert not kv.can_allocate(3, 9, hit), "a revived block is not also a free one"
    assert kv.usage().num_evictions == 0


def test_stale_hit_and_prefix_on_existing_seq_are_refused() -> None:
    kv = KVCacheManager(4, 4, enable_prefix_caching=True)
    cached_seq(kv, 1, TOKENS[:9])
    kv.free(1)
    hit = kv.lookup_prefix(TOKENS[:9])
    kv.allocate(2, 12)  # takes the unused block, then evicts the second cached one
    kv.free(2)
    with pytest.raises(KVCacheError, match="stale prefix hit"):
        kv.allocate(3, 9, hit)
    assert not kv.has_seq(3)
    kv.allocate(3, 4)
    kv.allocate(3, 5, kv.lookup_prefix([1] * 9))  # an empty hit is no hit
    cached_seq(kv, 4, TOKENS[:5])
    with pytest.raises(KVCacheError, match="new seqs"):
        kv.allocate(3, 8, kv.lookup_prefix(TOKENS[:5]))
    kv.check_integrity()


def test_truncate_into_a_cached_block_copies_before_writing() -> None:
    kv = KVCacheManager(8, 4, enable_prefix_caching=True)
    cached_seq(kv, 1, TOKENS[:8])
    keyed = kv.block_ids(1)[1]
    kv.truncate(1, 6)
    (src, dst), = kv.append(1)
    assert src == keyed and kv.block_key(keyed) is not None, "the cached block keeps its tokens"
    assert kv.block_key(dst) is None
    kv.check_integrity()


def test_fork_and_swap_keep_key_chains() -> None:
    kv = KVCacheManager(8, 4, num_host_blocks=8, enable_prefix_caching=True)
    cached_seq(kv, 1, TOKENS[:6])
    kv.fork(1, 2)
    kv.append(2, 2)
    kv.cache_blocks(2, [*TOKENS[:6], 7, 8], 8)
    assert kv.block_key(kv.block_ids(2)[1]) == hash_block(
        hash_block(None, TOKENS[:4], None), [104, 105, 7, 8], None)
    kv.swap_out(2)
    kv.check_integrity()
    kv.allocate(3, 16)  # evict the cached copies while seq 2 is on host
    kv.free(3)
    kv.swap_in(2)
    # Seq 1 still publishes the first block's key, so only the second is re-keyed.
    assert [kv.block_key(b) for b in kv.block_ids(2)] == [
        None, hash_block(hash_block(None, TOKENS[:4], None), [104, 105, 7, 8], None),
    ]
    kv.free(1)
    kv.free(2)
    assert kv.lookup_prefix([*TOKENS[:6], 7, 8, 9]).num_blocks == 2
    kv.check_integrity()


def test_caching_off_never_keys_blocks() -> None:
    kv = KVCacheManager(8, 4)
    kv.allocate(1, 10, kv.lookup_prefix(TOKENS))
    kv.cache_blocks(1, TOKENS, 10)
    assert kv.lookup_prefix(TOKENS).num_blocks == 0
    assert all(kv.block_key(b) is None for b in kv.block_ids(1))
    assert kv.usage().num_cached == 0
    with pytest.raises(KVCacheError, match="cannot cache"):
        kv.cache_blocks(1, TOKENS, 11)

"""BlockPool: ref counts, LRU free queue order, refusals, content keys and eviction."""

from __future__ import annotations

import pytest

from trtkv.runtime.kv import BlockPool, KVCacheError, NoFreeBlocksError


def test_allocate_takes_from_head_and_free_goes_to_tail() -> None:
    pool = BlockPool(4)
    assert pool.allocate(2) == [0, 1]
    pool.decref(1)
    pool.decref(0)
    # 2 and 3 were free longest; 1 then 0 were freed in that order.
    assert pool.free_block_ids() == [2, 3, 1, 0]
    assert pool.allocate(4) == [2, 3, 1, 0]
    assert pool.num_free == 0 and pool.num_used == 4


def test_failed_allocation_changes_nothing() -> None:
    pool = BlockPool(3)
    pool.allocate(1)
    before = pool.free_block_ids()
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(3)
    assert pool.free_block_ids() == before
    assert [pool.ref_count(b) for b in range(3)] == [1, 0, 0]


def test_ref_counts_keep_shared_blocks_in_use() -> None:
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.incref(b)
    pool.decref(b)
    assert pool.ref_count(b) == 1 and not pool.is_free(b)
    pool.decref(b)
    assert pool.is_free(b)


def test_double_free_is_refused() -> None:
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.decref(b)
    with pytest.raises(KVCacheError, match="double free"):
        pool.decref(b)
    assert pool.num_free == 2


@pytest.mark.parametrize("block_id", [-1, 2, 100])
def test_out_of_range_ids_are_refused(block_id: int) -> None:
    pool = BlockPool(2)
    for op in (pool.incref, pool.decref, pool.ref_count, pool.touch):
        with pytest.raises(KVCacheError, match="out of range"):
            op(block_id)


def test_incref_of_a_free_block_is_refused() -> None:
    pool = BlockPool(2)
    with pytest.raises(KVCacheError, match="is free"):
        pool.incref(1)
    assert pool.ref_count(1) == 0


def test_keys_survive_free_until_eviction() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    assert pool.set_key(a, b"ka")
    assert not pool.set_key(b, b"ka"), "a key names one block only"
    pool.decref(a)
    assert pool.block_of(b"ka") == a and pool.key_of(a) == b"ka"
    pool.touch(a)  # a prefix hit revives the free block
    assert pool.ref_count(a) == 1 and not pool.is_free(a)
    pool.decref(a)
    pool.decref(b)
    assert pool.allocate(1) == [a], "the block freed first is reused first"
    assert pool.block_of(b"ka") is None and pool.key_of(a) is None
    assert pool.num_evictions == 1
    pool.check_integrity({a: 1})


def test_key_refusals() -> None:
    pool = BlockPool(2)
    (a,) = pool.allocate(1)
    with pytest.raises(KVCacheError, match="free"):
        pool.set_key(1, b"k")
    with pytest.raises(KVCacheError, match="no content key"):
        pool.touch(a)
    pool.set_key(a, b"k")
    with pytest.raises(KVCacheError, match="another content key"):
        pool.set_key(a, b"other")


def test_check_integrity_reports_wrong_ref_counts() -> None:
    pool = BlockPool(3)
    pool.allocate(2)
    pool.check_integrity({0: 1, 1: 1})
    with pytest.raises(AssertionError, match="block 1 has ref count 1 but 2"):
        pool.check_integrity({0: 1, 1: 2})
    with pytest.raises(AssertionError, match="block 2 has ref count 0 but 1"):
        pool.check_integrity({0: 1, 1: 1, 2: 1})

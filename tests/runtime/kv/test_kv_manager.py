"""KVCacheManager verbs and refusals: allocate/append, fork + copy-on-write, truncate, swap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trtkv.runtime.kv import KVCacheError, KVCacheManager, NoFreeBlocksError


def snapshot(kv: KVCacheManager) -> tuple[object, ...]:
    return (
        {s: (kv.block_ids(s), kv.num_tokens(s)) for s in kv._tables.tables},
        {s: (list(t), kv.num_tokens(s)) for s, t in kv._host.tables.items()},
        kv.usage(),
        kv._pool.free_block_ids(),
        [kv.ref_count(b) for b in range(kv.num_blocks)],
    )


def test_allocate_covers_tokens_and_grows() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4)
    assert kv.allocate(1, 5) == []
    assert len(kv.block_ids(1)) == 2 and kv.num_tokens(1) == 5
    kv.allocate(1, 8)
    assert len(kv.block_ids(1)) == 2
    kv.append(1)
    assert len(kv.block_ids(1)) == 3 and kv.num_tokens(1) == 9
    kv.allocate(1, 3)  # already covered: a no-op, never a shrink
    assert kv.num_tokens(1) == 9
    kv.check_integrity()
    assert kv.usage().num_used == 3 and kv.usage().num_free == 5


def test_can_allocate_agrees_with_allocate() -> None:
    kv = KVCacheManager(num_blocks=3, block_size=4)
    assert kv.can_allocate(1, 12) and not kv.can_allocate(1, 13)
    kv.allocate(1, 6)
    assert kv.can_append(1, 6) and not kv.can_append(1, 7)
    assert not kv.can_append(2)  # unknown seq


def test_failed_allocation_is_atomic() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=2)
    kv.allocate(1, 3)
    kv.fork(1, 2)
    kv.allocate(3, 2)
    before = snapshot(kv)
    with pytest.raises(NoFreeBlocksError):
        kv.allocate(2, 7)  # needs a copy-on-write block plus two more
    with pytest.raises(NoFreeBlocksError):
        kv.allocate(9, 5)
    assert kv.try_allocate(2, 7) is None and kv.try_allocate(9, 5) is None
    assert snapshot(kv) == before
    kv.check_integrity()


def test_fork_shares_blocks_and_cow_copies_partial_last_block() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4)
    kv.allocate(1, 6)
    kv.fork(1, 2)
    shared = kv.block_ids(1)
    assert kv.block_ids(2) == shared
    assert [kv.ref_count(b) for b in shared] == [2, 2]
    copies = kv.append(2)
    assert len(copies) == 1
    src, dst = copies[0]
    assert src == shared[1] and dst not in shared
    assert kv.block_ids(2) == (shared[0], dst)
    assert kv.ref_count(shared[0]) == 2 and kv.ref_count(src) == 1
    assert kv.append(1) == [], "the last holder writes in place"
    kv.check_integrity()


def test_no_copy_when_the_shared_block_is_full() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4)
    kv.allocate(1, 8)
    kv.fork(1, 2)
    assert kv.append(1) == [] and kv.append(2) == []
    assert kv.block_ids(1)[:2] == kv.block_ids(2)[:2]
    assert kv.block_ids(1)[2] != kv.block_ids(2)[2]
    kv.check_integrity()


def test_truncate_frees_blocks_past_the_end() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4)
    kv.allocate(1, 10)
    kept = kv.block_ids(1)[:2]
    kv.truncate(1, 5)
    assert kv.block_ids(1) == kept and kv.num_tokens(1) == 5
    assert kv.usage().num_used == 2
    kv.truncate(1, 0)
    assert kv.block_ids(1) == () and kv.usage().num_used == 0
    with pytest.raises(KVCacheError, match="cannot truncate"):
        kv.truncate(1, 1)
    kv.check_integrity()


def test_truncate_into_a_shared_block_then_append_copies() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4)
    kv.allocate(1, 8)
    kv.fork(1, 2)
    kv.truncate(2, 6)
    (src, dst), = kv.append(2)
    assert src == kv.block_ids(1)[1] and kv.block_ids(2) == (kv.block_ids(1)[0], dst)
    kv.check_integrity()


def test_unknown_and_double_free_are_refused() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4)
    kv.allocate(1, 4)
    kv.free(1)
    with pytest.raises(KVCacheError, match="already freed"):
        kv.free(1)
    for op in (kv.block_ids, kv.num_tokens, kv.swap_out, kv.swap_in, kv.append):
        with pytest.raises(KVCacheError):
            op(7)
    with pytest.raises(KVCacheError):
        kv.fork(7, 8)
    with pytest.raises(KVCacheError, match="out of range"):
        kv.ref_count(4)
    assert kv.usage().num_free == 4


def test_fork_into_an_existing_seq_is_refused() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4)
    kv.allocate(1, 4)
    kv.allocate(2, 4)
    with pytest.raises(KVCacheError, match="already exists"):
        kv.fork(1, 2)
    assert [kv.ref_count(b) for b in kv.block_ids(1)] == [1]


def test_swap_round_trip() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4, num_host_blocks=3)
    kv.allocate(1, 9)
    device = kv.block_ids(1)
    assert kv.can_swap_out(1)
    out = kv.swap_out(1)
    assert [d for d, _ in out] == list(device) and len({h for _, h in out}) == 3
    assert kv.is_swapped(1) and kv.num_tokens(1) == 9
    assert kv.usage().num_used == 0 and kv.usage().num_host_used == 3
    with pytest.raises(KVCacheError, match="swapped out"):
        kv.block_ids(1)
    with pytest.raises(KVCacheError, match="swapped out"):
        kv.allocate(1, 10)
    kv.check_integrity()
    assert kv.can_swap_in(1, num_new_tokens=7) and not kv.can_swap_in(1, num_new_tokens=8)
    back = kv.swap_in(1)
    assert [h for h, _ in back] == [h for _, h in out]
    assert kv.block_ids(1) == tuple(d for _, d in back)
    assert not kv.is_swapped(1) and kv.usage().num_host_used == 0
    kv.check_integrity()


def test_swap_refusals_change_nothing() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4, num_host_blocks=1)
    kv.allocate(1, 8)
    assert not kv.can_swap_out(1)
    before = snapshot(kv)
    with pytest.raises(NoFreeBlocksError):
        kv.swap_out(1)
    assert snapshot(kv) == before
    kv.allocate(2, 4)
    kv.swap_out(2)
    kv.allocate(3, 8)  # takes the device room seq 2 would need
    with pytest.raises(KVCacheError, match="not swapped out"):
        kv.swap_in(3)
    before = snapshot(kv)
    with pytest.raises(NoFreeBlocksError):
        kv.swap_in(2)
    assert snapshot(kv) == before
    kv.free(2)  # a swapped seq frees its host blocks
    assert kv.usage().num_host_used == 0
    kv.check_integrity()


def test_check_integrity_catches_corruption() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4)
    kv.allocate(1, 8)
    kv._tables.tables[1].append(3)  # a block the pool thinks is free
    kv._tables.num_tokens[1] = 12
    with pytest.raises(AssertionError, match="block 3"):
        kv.check_integrity()
    kv = KVCacheManager(num_blocks=4, block_size=4)
    kv.allocate(1, 8)
    kv._tables.num_tokens[1] = 9
    with pytest.raises(AssertionError, match="expected 3"):
        kv.check_integrity()


def test_kv_and_scheduler_import_no_heavy_frameworks() -> None:
    code = (
        "import sys, trtkv.runtime.kv, trtkv.runtime.scheduler; "
        "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

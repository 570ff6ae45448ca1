"""Eviction policies (lru, ttl, cost) of the block pool against a reference model of each
policy: random operations, the same victims, keys and free-queue order after every one, and
`check_integrity()` throughout; then the policies end to end in the KV manager."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trtkv.errors import ConfigError
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.kv import KVCacheManager
from trtkv.runtime.kv.block_pool import BlockPool
from trtkv.runtime.kv.errors import KVCacheError
from trtkv.runtime.kv.eviction import EVICTION_POLICIES

TTL = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class RefBlock:
    ref: int = 0
    key: bytes | None = None
    parent: bytes | None = None
    depth: int = 0
    hits: int = 0
    released: float = 0.0
    order: int = 0  # push order into the free queue (the initial queue is id order)


@dataclass
class RefPool:
    """The policies as written in `trtkv.runtime.kv.eviction`, by brute force."""

    policy: str
    n: int
    clock: Clock
    blocks: list[RefBlock] = field(default_factory=list)
    pushes: int = 0

    def __post_init__(self) -> None:
        self.blocks = [RefBlock(order=i - self.n) for i in range(self.n)]

    def free(self) -> list[int]:
        return [b for b in range(self.n) if self.blocks[b].ref == 0]

    def children(self, key: bytes) -> int:
        return sum(1 for blk in self.blocks if blk.key is not None and blk.parent == key)

    def order(self) -> list[int]:
        """Free blocks, next to be taken first."""
        free = self.free()
        if self.policy != "cost":
            return sorted(free, key=lambda b: self.blocks[b].order)
        plain = sorted((b for b in free if self.blocks[b].key is None), key=lambda b: self.blocks[b].order)

        def rank(b: int) -> tuple[int, int, int]:
            blk = self.blocks[b]
            assert blk.key is not None
            return (1 if self.children(blk.key) else 0, (blk.hits + 1) * (blk.depth + 1), blk.order)

        return plain + sorted((b for b in free if self.blocks[b].key is not None), key=rank)

    def expired(self, b: int) -> bool:
        blk = self.blocks[b]
        return (self.policy == "ttl" and blk.ref == 0 and blk.key is not None
                and self.clock.now - blk.released > TTL)

    def drop(self, b: int) -> None:
        blk = self.blocks[b]
        blk.key, blk.parent, blk.depth, blk.hits = None, None, 0, 0

    def allocate(self, k: int) -> list[int]:
        for b in range(self.n):
            if self.expired(b):
                self.drop(b)
        taken = []
        for _ in range(k):
            b = self.order()[0]
            self.drop(b)
            self.blocks[b].ref = 1
            taken.append(b)
        return taken

    def decref(self, b: int) -> None:
        blk = self.blocks[b]
        blk.ref -= 1
        if blk.ref == 0:
            blk.released, blk.order = self.clock.now, self.pushes
            self.pushes += 1

    def block_of(self, key: bytes) -> int | None:
        for b, blk in enumerate(self.blocks):
            if blk.key == key:
                if self.expired(b):
                    self.drop(b)
                    return None
                return b
        return None

    def set_key(self, b: int, key: bytes, parent: bytes | None, depth: int) -> bool:
        if any(blk.key == key for blk in self.blocks):
            return False
        blk = self.blocks[b]
        blk.key, blk.parent, blk.depth = key, parent, depth
        return True

    def touch(self, b: int) -> None:
        blk = self.blocks[b]
        blk.ref += 1
        blk.hits += 1


def _compare(pool: BlockPool, ref: RefPool) -> None:
    pool.check_integrity({b: blk.ref for b, blk in enumerate(ref.blocks) if blk.ref})
    assert pool.free_block_ids() == ref.order()
    assert [pool.key_of(b) for b in range(ref.n)] == [blk.key for blk in ref.blocks]


@pytest.mark.parametrize("policy", EVICTION_POLICIES)
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12))
def test_pool_matches_the_reference_policy(policy: str, seed: int, n: int) -> None:
    rng = random.Random(seed)
    clock = Clock()
    pool = BlockPool(n, policy, TTL if policy == "ttl" else 0.0, clock)
    ref = RefPool(policy, n, clock)
    keys = [bytes([i]) for i in range(2 * n + 2)]
    for _ in range(200):
        op = rng.choice(("alloc", "free", "free", "incref", "key", "key", "hit", "tick"))
        used = [b for b in range(n) if ref.blocks[b].ref]
        if op == "alloc":
            k = rng.randint(0, len(ref.free()))
            assert pool.allocate(k) == ref.allocate(k)
        elif op == "free" and used:
            b = rng.choice(used)
            pool.decref(b)
            ref.decref(b)
        elif op == "incref" and used:
            b = rng.choice(used)
            pool.incref(b)
            ref.blocks[b].ref += 1
        elif op == "key" and used:
            b = rng.choice(used)
            if ref.blocks[b].key is None:
                keyed = [blk for blk in ref.blocks if blk.key is not None]
                parent = rng.choice(keyed) if keyed and rng.random() < 0.7 else None
                depth = parent.depth + 1 if parent is not None else 0
                key = rng.choice(keys)
                pk = parent.key if parent is not None else None
                assert pool.set_key(b, key, pk, depth) == ref.set_key(b, key, pk, depth)
        elif op == "hit":
            key = rng.choice(keys)
            b = pool.block_of(key)
            assert b == ref.block_of(key)
            if b is not None:
                pool.touch(b)
                ref.touch(b)
        elif op == "tick":
            clock.now += rng.choice((0.5, 1.0, 1.5))
        _compare(pool, ref)
    assert pool.num_evictions == sum(pool.evictions_by_reason.values())
    if policy != "ttl":
        assert "ttl" not in pool.evictions_by_reason


def test_cost_keeps_the_hit_and_deep_chain_and_evicts_uncached_first() -> None:
    pool = BlockPool(6, "cost")
    blocks = pool.allocate(6)
    a, b, c, d, plain, x = blocks
    pool.set_key(a, b"A", None, 0)
    pool.set_key(b, b"B", b"A", 1)
    pool.set_key(c, b"C", b"B", 2)  # a three-block chain A-B-C
    pool.set_key(d, b"D", None, 0)  # a one-block chain
    pool.set_key(x, b"X", None, 0)
    pool.touch(x)  # X was hit twice (two holders, then released)
    pool.touch(x)
    for blk in blocks:
        while pool.ref_count(blk):
            pool.decref(blk)
    # Uncached first; then leaves by (hits + 1) x (depth + 1), ties to the earlier release:
    # D (1) before the deeper C (3, released before X's 3); A and B are inner until C goes.
    assert pool.allocate(1) == [plain]
    assert pool.allocate(1) == [d]
    assert pool.allocate(1) == [c]
    assert pool.allocate(1) == [b]  # a leaf once C went: 1 x 2
    assert pool.allocate(1) == [a]
    assert pool.allocate(1) == [x]  # the block hit twice outlives the unhit chain
    assert pool.evictions_by_reason == {"capacity": 5}
    assert pool.num_hit_blocks == 2


def test_ttl_expires_lazily_at_lookup_and_allocation() -> None:
    clock = Clock()
    pool = BlockPool(3, "ttl", 10.0, clock)
    a, b, c = pool.allocate(3)
    pool.set_key(a, b"A")
    pool.set_key(b, b"B")
    for blk in (a, b, c):
        pool.decref(blk)
    clock.now += 10.0
    assert pool.block_of(b"A") == a  # not past the ttl yet
    clock.now += 0.5
    assert pool.block_of(b"A") is None and pool.key_of(a) is None  # expired at lookup
    assert pool.key_of(b) == b"B"  # nothing else is touched by a lookup
    pool.allocate(1)  # expiry at allocation drops B's key too
    assert pool.key_of(b) is None
    assert pool.evictions_by_reason == {"ttl": 2} and pool.evicted_age_s == pytest.approx(21.0)
    with pytest.raises(KVCacheError, match="ttl > 0"):
        BlockPool(3, "ttl", 0.0)
    with pytest.raises(KVCacheError, match="unknown eviction policy"):
        BlockPool(3, "fifo")


@pytest.mark.parametrize("policy", EVICTION_POLICIES)
def test_a_hit_block_is_never_evicted_for_the_request_that_hit_it(policy: str) -> None:
    """A prefix hit whose blocks are the only free ones: allocating the rest of the
    sequence must evict other blocks, never the hit (every policy)."""
    clock = Clock()
    kv = KVCacheManager(4, 2, enable_prefix_caching=True, eviction=policy,
                        prefix_ttl_s=TTL if policy == "ttl" else 0.0, clock=clock)
    tokens = [1, 2, 3, 4, 5, 6, 7]
    kv.allocate(0, 7)
    kv.cache_blocks(0, tokens, 7)
    kv.free(0)
    hit = kv.lookup_prefix(tokens)
    assert hit.num_blocks == 3
    kv.allocate(1, 8, hit)
    assert kv.block_ids(1)[:3] == hit.block_ids
    kv.check_integrity()
    assert kv.usage().num_hit_blocks == 3 and kv.usage().eviction_policy == policy


def test_engine_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="enable-prefix-caching"):
        EngineConfig(prefix_eviction="cost")
    with pytest.raises(ConfigError, match="prefix-ttl-s"):
        EngineConfig(enable_prefix_caching=True, prefix_eviction="ttl")
    with pytest.raises(ConfigError, match="applies to --prefix-eviction ttl"):
        EngineConfig(enable_prefix_caching=True, prefix_ttl_s=5.0)
    with pytest.raises(ConfigError, match="must be one of"):
        EngineConfig(enable_prefix_caching=True, prefix_eviction="mru")
    EngineConfig(enable_prefix_caching=True, prefix_eviction="ttl", prefix_ttl_s=60.0)

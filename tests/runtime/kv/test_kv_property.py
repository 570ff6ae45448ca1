"""Stateful property test of KVCacheManager against a pool that stores real contents.

Every slot write goes through the block table, every copy the manager asks for is
performed, and after each operation each sequence must read back exactly the tokens it
wrote: a wrong ref count, a missed copy-on-write or a lost swap shows up as wrong contents.
`check_integrity()` runs after every operation too.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trtkv.runtime.kv import KVCacheError, KVCacheManager, NoFreeBlocksError


class KVMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ids = itertools.count()
        self.tokens = itertools.count(1)
        self.expected: dict[int, list[int]] = {}
        self.swapped: set[int] = set()

    @initialize(bs=st.integers(1, 4), nb=st.integers(1, 12), nh=st.integers(0, 6))
    def setup(self, bs: int, nb: int, nh: int) -> None:
        self.bs = bs
        self.kv = KVCacheManager(nb, bs, nh)
        self.device: list[list[int]] = [[0] * bs for _ in range(nb)]
        self.host: list[list[int]] = [[0] * bs for _ in range(nh)]

    def pick(self, i: int, swapped: bool) -> int:
        ids = sorted(s for s in self.expected if (s in self.swapped) == swapped)
        return ids[i % len(ids)]

    def has(self, swapped: bool) -> bool:
        return any((s in self.swapped) == swapped for s in self.expected)

    def write(self, seq: int, start: int, end: int) -> None:
        table = self.kv.block_ids(seq)
        for p in range(start, end):
            token = next(self.tokens)
            self.device[table[p // self.bs]][p % self.bs] = token
            self.expected[seq].append(token)

    def grow(self, seq: int, num_tokens: int) -> None:
        old = len(self.expected[seq])
        can = self.kv.can_allocate(seq, num_tokens)
        try:
            copies = self.kv.allocate(seq, num_tokens)
        except NoFreeBlocksError:
            assert not can, "can_allocate said yes but allocate failed"
            assert self.kv.num_tokens(seq) == old
            return
        assert can, "can_allocate said no but allocate succeeded"
        for src, dst in copies:
            self.device[dst] = list(self.device[src])
        self.write(seq, old, num_tokens)

    @rule(n=st.integers(0, 10))
    def new_seq(self, n: int) -> None:
        seq = next(self.ids)
        if not self.kv.can_allocate(seq, n):
            try:
                self.kv.allocate(seq, n)
            except NoFreeBlocksError:
                assert not self.kv.has_seq(seq)
                return
            raise AssertionError("allocate succeeded although can_allocate said no")
        self.kv.allocate(seq, n)
        self.expected[seq] = []
        self.write(seq, 0, n)

    @precondition(lambda self: self.has(False))
    @rule(i=st.integers(0, 99), k=st.integers(1, 6))
    def append(self, i: int, k: int) -> None:
        seq = self.pick(i, False)
        self.grow(seq, len(self.expected[seq]) + k)

    @precondition(lambda self: self.has(False))
    @rule(i=st.integers(0, 99))
    def fork(self, i: int) -> None:
        parent = self.pick(i, False)
        child = next(self.ids)
        self.kv.fork(parent, child)
        self.expected[child] = list(self.expected[parent])

    @precondition(lambda self: self.has(False))
    @rule(i=st.integers(0, 99), frac=st.floats(0, 1))
    def truncate(self, i: int, frac: float) -> None:
        seq = self.pick(i, False)
        n = int(len(self.expected[seq]) * frac)
        self.kv.truncate(seq, n)
        del self.expected[seq][n:]

    @precondition(lambda self: bool(self.expected))
    @rule(i=st.integers(0, 99))
    def free(self, i: int) -> None:
        seq = sorted(self.expected)[i % len(self.expected)]
        self.kv.free(seq)
        del self.expected[seq]
        self.swapped.discard(seq)
        try:
            self.kv.free(seq)
        except KVCacheError:
            pass
        else:
            raise AssertionError("double free was accepted")

    @precondition(lambda self: self.has(False))
    @rule(i=st.integers(0, 99))
    def swap_out(self, i: int) -> None:
        seq = self.pick(i, False)
        if not self.kv.can_swap_out(seq):
            return
        for dev, host in self.kv.swap_out(seq):
            self.host[host] = list(self.device[dev])
        self.swapped.add(seq)

    @precondition(lambda self: self.has(True))
    @rule(i=st.integers(0, 99))
    def swap_in(self, i: int) -> None:
        seq = self.pick(i, True)
        if not self.kv.can_swap_in(seq):
            return
        for host, dev in self.kv.swap_in(seq):
            self.device[dev] = list(self.host[host])
        self.swapped.discard(seq)

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "kv"):
            return
        self.kv.check_integrity()
        for seq, want in self.expected.items():
            assert self.kv.num_tokens(seq) == len(want)
            if seq in self.swapped:
                continue
            table = self.kv.block_ids(seq)
            got = [self.device[table[p // self.bs]][p % self.bs] for p in range(len(want))]
            assert got == want, f"seq {seq} reads {got}, wrote {want}"
        usage = self.kv.usage()
        assert usage.num_free + usage.num_used == usage.num_total

    def teardown(self) -> None:
        if not hasattr(self, "kv"):
            return
        for seq in list(self.expected):
            self.kv.free(seq)
        self.kv.check_integrity()
        assert self.kv.usage().num_used == 0 and self.kv.usage().num_host_used == 0


KVMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_kv_manager_state_machine = KVMachine.TestCase

"""Stateful property test of prefix caching: hits must hold exactly the tokens they claim.

Tokens come from a two-letter alphabet so prompts share prefixes often. Every write goes
through the block table and every copy is performed, so a wrong key, a block written after
it was published, or a hit on an evicted block shows up as a sequence reading back tokens
it does not have. `check_integrity()` runs after every operation.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trtkv.runtime.kv import KVCacheManager, NoFreeBlocksError

TOKENS = st.lists(st.integers(0, 1), min_size=1, max_size=10)


class PrefixMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ids = itertools.count()
        self.expected: dict[int, list[int]] = {}
        self.swapped: set[int] = set()
        self.key_content: dict[bytes, list[int]] = {}

    @initialize(bs=st.integers(1, 3), nb=st.integers(2, 10), nh=st.integers(0, 4))
    def setup(self, bs: int, nb: int, nh: int) -> None:
        self.bs = bs
        self.kv = KVCacheManager(nb, bs, nh, enable_prefix_caching=True)
        self.device: list[list[int]] = [[-1] * bs for _ in range(nb)]
        self.host: list[list[int]] = [[-1] * bs for _ in range(nh)]

    def on_device(self) -> list[int]:
        return sorted(s for s in self.expected if s not in self.swapped)

    def write(self, seq: int, tokens: list[int], start: int) -> None:
        table = self.kv.block_ids(seq)
        for p in range(start, len(tokens)):
            self.device[table[p // self.bs]][p % self.bs] = tokens[p]
        self.expected[seq] = list(tokens)
        self.kv.cache_blocks(seq, tokens, len(tokens))
        bs = self.bs
        for i, block_id in enumerate(table[: len(tokens) // bs]):
            key = self.kv.block_key(block_id)
            if key is not None:
                want = tokens[i * bs : (i + 1) * bs]
                assert self.key_content.setdefault(key, want) == want, "one key, two contents"

    @rule(tokens=TOKENS, salt=st.sampled_from([None, "a"]))
    def new_seq(self, tokens: list[int], salt: str | None) -> None:
        seq = next(self.ids)
        hit = self.kv.lookup_prefix(tokens, salt)
        assert hit.num_blocks * self.bs < len(tokens), "the last token must be computed"
        if not self.kv.can_allocate(seq, len(tokens), hit):
            try:
                self.kv.allocate(seq, len(tokens), hit)
            except NoFreeBlocksError:
                assert not self.kv.has_seq(seq)
                return
            raise AssertionError("allocate succeeded although can_allocate said no")
        self.kv.allocate(seq, len(tokens), hit)
        event(f"prefix hit: {hit.num_blocks > 0}")
        self.write(seq, tokens, hit.num_blocks * self.bs)

    @precondition(lambda self: bool(self.on_device()))
    @rule(i=st.integers(0, 99), more=TOKENS)
    def append(self, i: int, more: list[int]) -> None:
        seq = self.on_device()[i % len(self.on_device())]
        old = self.expected[seq]
        try:
            copies = self.kv.append(seq, len(more))
        except NoFreeBlocksError:
            return
        for src, dst in copies:
            self.device[dst] = list(self.device[src])
        self.write(seq, old + more, len(old))

    @precondition(lambda self: bool(self.on_device()))
    @rule(i=st.integers(0, 99))
    def fork(self, i: int) -> None:
        parent = self.on_device()[i % len(self.on_device())]
        child = next(self.ids)
        self.kv.fork(parent, child)
        self.expected[child] = list(self.expected[parent])

    @precondition(lambda self: bool(self.on_device()))
    @rule(i=st.integers(0, 99), frac=st.floats(0, 1))
    def truncate(self, i: int, frac: float) -> None:
        seq = self.on_device()[i % len(self.on_device())]
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

    @precondition(lambda self: bool(self.on_device()))
    @rule(i=st.integers(0, 99))
    def swap_out(self, i: int) -> None:
        seq = self.on_device()[i % len(self.on_device())]
        if self.kv.can_swap_out(seq):
            for dev, host in self.kv.swap_out(seq):
                self.host[host] = list(self.device[dev])
            self.swapped.add(seq)

    @precondition(lambda self: bool(self.swapped))
    @rule(i=st.integers(0, 99))
    def swap_in(self, i: int) -> None:
        seq = sorted(self.swapped)[i % len(self.swapped)]
        if self.kv.can_swap_in(seq):
            for host, dev in self.kv.swap_in(seq):
                self.device[dev] = list(self.host[host])
            self.swapped.discard(seq)

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "kv"):
            return
        self.kv.check_integrity()
        for seq in self.on_device():
            want = self.expected[seq]
            table = self.kv.block_ids(seq)
            got = [self.device[table[p // self.bs]][p % self.bs] for p in range(len(want))]
            assert got == want, f"seq {seq} reads {got}, has {want}"
        for block_id in range(self.kv.num_blocks):  # a cached block holds what its key says
            key = self.kv.block_key(block_id)
            if key is not None:
                assert self.device[block_id] == self.key_content[key], f"block {block_id}"

PrefixMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_prefix_cache_state_machine = PrefixMachine.TestCase

"""In-flight prefix blocks: full blocks that running prefills compute but have not cached.

Owns: for each running sequence still in prefill, the span of its full-block keys (prompt
plus any generated tokens it recomputes) from its first uncomputed block to the end, and a
count per key over those spans. The scheduler defers admitting a waiting request whose next
uncached block is among these keys, so that a shared prefix is computed once, not once per
request admitted in the same step. Pure bookkeeping: it never touches the KV cache.
Must not import torch or tensorrt.
"""

from __future__ import annotations

from collections.abc import Sequence


class InflightBlocks:
    """Keys of blocks some running prefill will compute (or computes this step).

    Args:
        block_size: tokens per KV block.
    """

    def __init__(self, block_size: int) -> None:
        self._block_size = block_size
        self._count: dict[bytes, int] = {}
        self._spans: dict[int, tuple[Sequence[bytes], int, int]] = {}
        """seq id -> (its block keys, first block still in flight, end of its span)."""

    def __contains__(self, key: bytes) -> bool:
        return key in self._count

    def __len__(self) -> int:
        return len(self._count)

    def add(self, seq_id: int, block_keys: Sequence[bytes], num_computed: int) -> None:
        """A sequence starts (or resumes) a prefill with ``num_computed`` tokens in the pool:
        its blocks from ``num_computed // block_size`` on are in flight.

        Args:
            block_keys: the keys of its full blocks (kept, not copied: the sequence only
                appends to it, and the span ends at its current length).
        """
        assert seq_id not in self._spans, f"seq {seq_id} is already in flight"
        first, end = num_computed // self._block_size, len(block_keys)
        if first >= end:
            return
        count = self._count
        for key in block_keys[first:end]:
            count[key] = count.get(key, 0) + 1
        self._spans[seq_id] = (block_keys, first, end)

    def advance(self, seq_id: int, num_computed: int) -> None:
        """The sequence now has ``num_computed`` tokens in the pool (and cached its full
        blocks): those blocks are no longer in flight."""
        span = self._spans.get(seq_id)
        if span is None:
            return
        block_keys, first, end = span
        done = min(num_computed // self._block_size, end)
        if done <= first:
            return
        self._release(block_keys, first, done)
        if done == end:
            del self._spans[seq_id]
        else:
            self._spans[seq_id] = (block_keys, done, end)

    def remove(self, seq_id: int) -> None:
        """The sequence stopped prefilling without computing its span (preempted, dropped)."""
        span = self._spans.pop(seq_id, None)
        if span is not None:
            self._release(*span)

    def _release(self, block_keys: Sequence[bytes], first: int, end: int) -> None:
        count = self._count
        for i in range(first, end):
            key = block_keys[i]
            n = count[key] - 1
            if n:
                count[key] = n
            else:
                del count[key]

    def check_integrity(self, prefilling: set[int]) -> None:
        """Assert that only sequences in ``prefilling`` have spans and the counts add up."""
        extra = self._spans.keys() - prefilling
        assert not extra, f"in-flight spans kept for seqs not in prefill: {sorted(extra)}"
        want: dict[bytes, int] = {}
        for block_keys, first, end in self._spans.values():
            for key in block_keys[first:end]:
                want[key] = want.get(key, 0) + 1
        assert want == self._count, "in-flight key counts disagree with the spans"

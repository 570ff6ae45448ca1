"""A priority queue of sequences with O(log n) push/pop and O(1) removal.

Removal is lazy: the heap entry stays until it reaches the top, then it is skipped. The heap
is rebuilt when stale entries outnumber live ones, so memory stays O(live).
Must not import torch or tensorrt.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from trtkv.runtime.scheduler.sequence import SeqState, SortKey


class SeqQueue:
    """Sequences ordered by `SeqState.key` (priority, then arrival); smallest first."""

    def __init__(self) -> None:
        self._heap: list[tuple[SortKey, int]] = []
        self._live: dict[int, SeqState] = {}
        self._entry_of: dict[int, SortKey] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._live

    def __iter__(self) -> Iterator[SeqState]:
        """Live sequences in queue order. O(n log n); for checks and tests."""
        return iter(sorted(self._live.values(), key=lambda s: s.key))

    def push(self, seq: SeqState) -> None:
        assert seq.seq_id not in self._live, f"seq {seq.seq_id} is already queued"
        self._live[seq.seq_id] = seq
        self._entry_of[seq.seq_id] = seq.key
        heapq.heappush(self._heap, (seq.key, seq.seq_id))

    def remove(self, seq_id: int) -> None:
        del self._live[seq_id]
        del self._entry_of[seq_id]
        if len(self._heap) > 2 * len(self._live) + 32:
            self._heap = [(s.key, s.seq_id) for s in self._live.values()]
            heapq.heapify(self._heap)

    def peek(self) -> SeqState | None:
        heap = self._heap
        while heap:
            key, seq_id = heap[0]
            if self._entry_of.get(seq_id) == key:
                # A removed-then-pushed sequence leaves a stale twin with the same key; the
                # first one popped wins and the twin is skipped once the id is gone.
                return self._live[seq_id]
            heapq.heappop(heap)
        return None

    def pop(self) -> SeqState:
        seq = self.peek()
        if seq is None:
            raise IndexError("pop from an empty SeqQueue")
        heapq.heappop(self._heap)
        self.remove(seq.seq_id)
        return seq

"""Where every live sequence is: the waiting, running and swapped sets, and request ids.

Owns: sequence ids, the request id -> seq ids map and the three sets (running sorted best
first by `SeqState.key`). It moves sequences between sets but makes no policy decision and
never touches the KV cache; `Scheduler` does both. Must not import torch or tensorrt.
"""

from __future__ import annotations

import bisect

from trtkv.runtime.kv.manager import KVCacheManager
from trtkv.runtime.plan import NO_STOP_IDS, StopRule
from trtkv.runtime.scheduler.queue import SeqQueue
from trtkv.runtime.scheduler.sequence import SeqState, SeqStatus, SortKey


def _sort_key(seq: SeqState) -> SortKey:
    return seq.key


class SeqRegistry:
    """The live sequences of one scheduler, each in exactly one of three sets."""

    def __init__(self) -> None:
        self.seqs: dict[int, SeqState] = {}
        self.requests: dict[str, list[int]] = {}
        self.waiting = SeqQueue()
        self.swapped = SeqQueue()
        self.running: list[SeqState] = []
        """Sorted by `SeqState.key`, best first; the last entries are preempted first."""
        self._next_seq_id = 0
        self._next_arrival = 0

    def new_seq(self, request_id: str, prompt_ids: list[int], max_new_tokens: int,
                priority: int, rank: tuple[int, float], cache_salt: str | None,
                stop: StopRule = NO_STOP_IDS) -> SeqState:
        """Register a new request's sequence and queue it as waiting.

        ``rank`` is the policy's (class, time) for it (`SchedulingPolicy.rank`); the arrival
        order and the seq id complete its `SortKey`.
        """
        seq = self._create(request_id, prompt_ids, len(prompt_ids), max_new_tokens, priority,
                           (*rank, self._next_arrival), cache_salt)
        seq.stop = stop
        self._next_arrival += 1
        self.waiting.push(seq)
        return seq

    def fork(self, parent: SeqState, token: int) -> SeqState:
        """A running child of ``parent`` with its tokens plus ``token`` (same rank/arrival)."""
        child = self._child(parent, token)
        child.num_computed = parent.num_computed
        child.num_cached_tokens = parent.num_cached_tokens
        self.add_running(child)
        return child

    def fork_waiting(self, parent: SeqState, token: int) -> SeqState:
        """A waiting child of a parent that holds no device blocks (preempted): its tokens
        plus ``token``, computed from scratch (or the prefix cache) when admitted."""
        child = self._child(parent, token)
        child.status = SeqStatus.WAITING
        self.waiting.push(child)
        return child

    def _child(self, parent: SeqState, token: int) -> SeqState:
        """A new sequence with ``parent``'s tokens plus ``token``, rank, keys and stop rule."""
        rank_class, rank_time, arrival, _ = parent.key
        child = self._create(parent.request_id, [*parent.token_ids, token], parent.prompt_len,
                             parent.max_new_tokens, parent.priority,
                             (rank_class, rank_time, arrival), parent.cache_salt)
        child.block_keys = list(parent.block_keys)
        child.stop = parent.stop
        return child

    def add_running(self, seq: SeqState) -> None:
        seq.status = SeqStatus.RUNNING
        bisect.insort(self.running, seq, key=_sort_key)

    def remove_running(self, seq: SeqState) -> None:
        # Keys are unique (they end with the seq id), so bisect finds exactly this sequence.
        i = bisect.bisect_left(self.running, seq.key, key=_sort_key)
        assert self.running[i] is seq, f"seq {seq.seq_id} is not in the running set"
        del self.running[i]

    def requeue(self, seq: SeqState, status: SeqStatus) -> None:
        """Move a running sequence to the waiting or swapped queue (preemption)."""
        self.remove_running(seq)
        seq.status = status
        (self.swapped if status is SeqStatus.SWAPPED else self.waiting).push(seq)

    def drop(self, seq: SeqState, status: SeqStatus) -> None:
        """Forget a finished or aborted sequence."""
        if seq.status is SeqStatus.RUNNING:
            self.remove_running(seq)
        elif seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq.seq_id)
        elif seq.status is SeqStatus.SWAPPED:
            self.swapped.remove(seq.seq_id)
        seq.status = status
        del self.seqs[seq.seq_id]
        ids = self.requests[seq.request_id]
        ids.remove(seq.seq_id)
        if not ids:
            del self.requests[seq.request_id]

    def next_candidate(self) -> tuple[SeqState, SeqQueue] | None:
        """The best swapped or waiting sequence (by key) and its queue; None when both empty."""
        waiting, swapped = self.waiting.peek(), self.swapped.peek()
        if swapped is not None and (waiting is None or swapped.key < waiting.key):
            return swapped, self.swapped
        return (waiting, self.waiting) if waiting is not None else None

    def _create(self, request_id: str, token_ids: list[int], prompt_len: int,
                max_new_tokens: int, priority: int, order: tuple[int, float, int],
                cache_salt: str | None) -> SeqState:
        seq_id = self._next_seq_id
        self._next_seq_id += 1
        seq = SeqState(seq_id=seq_id, request_id=request_id, token_ids=token_ids,
                       prompt_len=prompt_len, max_new_tokens=max_new_tokens, priority=priority,
                       key=(*order, seq_id), cache_salt=cache_salt)
        self.seqs[seq_id] = seq
        self.requests.setdefault(request_id, []).append(seq_id)
        return seq

    def check_integrity(self, kv: KVCacheManager, in_flight: dict[int, int]) -> None:
        """Assert that sets, statuses and KV slot counts agree.

        Args:
            kv: the KV manager holding these sequences' tables.
            in_flight: seq id -> tokens of the plan not yet passed to `Scheduler.update`.
        """
        assert self.running == sorted(self.running, key=_sort_key), "running set unsorted"
        groups = (self.running, list(self.waiting), list(self.swapped))
        ids = [s.seq_id for group in groups for s in group]
        assert sorted(ids) == sorted(self.seqs), "seqs missing from or repeated in the sets"
        assert sorted(ids) == sorted(i for ids in self.requests.values() for i in ids)
        for seq in self.running:
            assert seq.status is SeqStatus.RUNNING and not kv.is_swapped(seq.seq_id)
            want = seq.num_computed + in_flight.get(seq.seq_id, 0)
            assert kv.num_tokens(seq.seq_id) == want, f"seq {seq.seq_id}: KV slots != computed"
            assert seq.num_computed < seq.num_tokens or seq.held, f"seq {seq.seq_id} has nothing to compute"
        for seq in self.swapped:
            assert seq.status is SeqStatus.SWAPPED and kv.is_swapped(seq.seq_id)
            assert kv.num_tokens(seq.seq_id) == seq.num_computed, f"swapped seq {seq.seq_id}"
        for seq in self.waiting:
            assert seq.status is SeqStatus.WAITING and not kv.has_seq(seq.seq_id)
            assert seq.num_computed == 0, f"waiting seq {seq.seq_id} has computed tokens"

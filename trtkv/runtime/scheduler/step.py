"""`StepBuilder`: what one `Scheduler.schedule()` call has decided so far, and the plan it
becomes. Shared by the scheduling stages (decodes, prefill chunks, admission, preemption).
"""

from __future__ import annotations

from trtkv.runtime.kv.block_tables import BlockCopy
from trtkv.runtime.kv.manager import KVCacheManager
from trtkv.runtime.plan import ScheduledSeq, StepPlan
from trtkv.runtime.scheduler.sequence import SeqState
from trtkv.runtime.scheduler.stats import Counters


class StepBuilder:
    """One step under construction: its token budget, scheduled sequences and block moves.

    Args:
        token_budget: ``max_num_batched_tokens``.
        chunked_prefill: whether a prefill may be split to fit the budget.
    """

    def __init__(self, token_budget: int, chunked_prefill: bool) -> None:
        self.token_budget = token_budget
        self.chunked_prefill = chunked_prefill
        self.decodes: list[ScheduledSeq] = []
        self.prefills: list[ScheduledSeq] = []
        self.scheduled: set[int] = set()
        self.copies: list[BlockCopy] = []
        self.swap_out: list[BlockCopy] = []
        self.swap_in: list[BlockCopy] = []
        self.preempted: list[int] = []

    def chunk_size(self, remaining: int) -> int:
        """Tokens of a ``remaining``-token prefill this step can take (0: none)."""
        if remaining <= self.token_budget:
            return remaining
        return self.token_budget if self.chunked_prefill else 0

    def add(self, seq: SeqState, num_tokens: int, decoding: bool, kv: KVCacheManager,
            counts: Counters) -> None:
        """Schedule ``num_tokens`` of ``seq`` (its blocks already allocated)."""
        start = seq.num_computed
        end = start + num_tokens
        token_ids = seq.token_ids
        scheduled = ScheduledSeq(
            seq.seq_id, (token_ids[-1],) if decoding else tuple(token_ids[start:end]), start,
            kv.block_ids(seq.seq_id), end == len(token_ids), False, seq.request_id,
        )
        self.token_budget -= num_tokens
        self.scheduled.add(seq.seq_id)
        if decoding:
            self.decodes.append(scheduled)
        else:
            self.prefills.append(scheduled)
            if start != seq.prefill_start or end != len(token_ids):
                counts.chunked += 1

    def plan(self) -> StepPlan:
        return StepPlan(
            seqs=tuple(self.decodes + self.prefills), swap_out=tuple(self.swap_out),
            swap_in=tuple(self.swap_in), block_copies=tuple(self.copies),
            preempted_seq_ids=tuple(self.preempted),
        )

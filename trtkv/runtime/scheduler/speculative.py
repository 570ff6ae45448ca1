"""Speculative decoding in the scheduler: drafts fitted into a step, verified drafts kept
and the rest rolled back.

A decode with a draft computes its last sampled token and ``k`` draft tokens in one
`ScheduledSeq` (``num_draft = k``). Drafts are added last, once decodes, prefill chunks and
admissions are planned, from the budget left, never past the sequence's remaining
``max_new_tokens`` (less the token the target adds), and only with free blocks: a draft
never preempts nor delays anything. After the step
the engine gives the accepted draft prefix and one token; the KV table is truncated to the
tokens whose K/V are right (the last sampled one and the accepted drafts), which frees the
blocks past them, and only then are full blocks published to the prefix cache, so no block
holding a rejected token is ever published.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from trtkv.runtime.kv.manager import KVCacheManager
from trtkv.runtime.plan import ScheduledSeq
from trtkv.runtime.scheduler.sequence import SeqState
from trtkv.runtime.scheduler.step import StepBuilder


def add_drafts(step: StepBuilder, drafts: Mapping[int, Sequence[int]], seqs: Mapping[int, SeqState],
               kv: KVCacheManager) -> None:
    """Grow this step's decodes by their drafts as far as the budget left, each one's
    remaining max_new_tokens and the free blocks allow (a draft is cut or left out)."""
    for i, d in enumerate(step.decodes):
        draft = drafts.get(d.seq_id)
        if not draft:
            continue
        if step.token_budget <= 0:
            return
        seq = seqs[d.seq_id]
        k = min(len(draft), step.token_budget, seq.draft_room)
        if k <= 0:
            continue
        copies = kv.try_allocate(d.seq_id, d.start_pos + 1 + k)
        if copies is None:
            continue
        step.copies.extend(copies)
        step.decodes[i] = d._replace(token_ids=(d.token_ids[0], *draft[:k]), block_ids=kv.block_ids(d.seq_id),
                                     num_draft=k)
        step.token_budget -= k


def accept_draft(seq: SeqState, s: ScheduledSeq, tokens: Sequence[int], kv: KVCacheManager) -> int:
    """Keep ``tokens`` (the accepted draft prefix and one token) up to the first that ends
    the sequence by its stop rule; roll the KV back to the ones computed. Returns how many
    were kept (the last may end the sequence: the caller checks it)."""
    num_out = len(seq.token_ids) - seq.prompt_len
    kept = 0
    for token in tokens:
        kept += 1
        if seq.stop.check(token, num_out + kept, seq.max_new_tokens) is not None:
            break
    seq.num_computed = s.start_pos + kept
    kv.truncate(seq.seq_id, seq.num_computed)
    seq.token_ids.extend(tokens[:kept])
    if kv.enable_prefix_caching:
        kv.cache_blocks(seq.seq_id, seq.token_ids, seq.num_computed, seq.block_keys)
    return kept

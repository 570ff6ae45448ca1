"""Continuous batching: which sequences compute which tokens each step.

Owns: the waiting, running and swapped sets, admission (rejects what can never be served,
defers what does not fit now), the per-step token and sequence budgets, chunked prefill,
preemption and forks. Block tables belong to the `KVCacheManager`; the scheduler only asks
it for blocks. Must not import torch, onnx, onnxruntime or tensorrt.

Each `schedule()` builds one `StepPlan` in three passes:
  1. decodes of running sequences (one token each, so a decode never starves);
  2. the next prefill chunk of running sequences still in prefill;
  3. admissions, swapped and waiting sequences merged in policy order, skipped in a step
     that preempted (admitting then would only cause more preemption). Admission stops at
     the first sequence that does not fit, so a large request is not overtaken forever
     (a request deferred by in-flight prefix de-duplication, below, or by the long-prefill
     throttle, `policy`, does not stop it).
Order (``scheduling_policy``, see `policy`): by default a LOWER priority number is served
first and ties go to the earlier arrival; fcfs ignores priorities; short-first serves the
least aged cost first. A preemption victim is the running sequence not yet scheduled this
step that ranks last (by default: the highest number, then the latest arrival). A decode that cannot grow preempts victims (itself last); a prefill
chunk that cannot grow only preempts sequences that rank below it, else waits a step.
A waiting request never preempts a running one.

Recompute preemption frees a victim's blocks and requeues it with its generated tokens;
on re-admission it prefills prompt + generated tokens and continues where it stopped. Swap
preemption moves its blocks to the host tier (recompute when the host tier is full).
Because a step that preempts admits nothing, swap preemption and swap-in never share a plan.

Speculative decoding (`schedule(drafts)`, `speculative`): a decode grows by its draft tokens
from the budget and free blocks left once everything else is planned; `update` keeps the accepted
prefix and rolls the rest back. Beam search: `update` with no tokens *holds* a sequence (its
K/V computed, its next token undecided) until `extend` gives it tokens, forking children that
share its blocks.

Prefix caching (when the KV manager has it on): admitting a waiting sequence looks up its
tokens in the prefix cache and starts computing after the cached blocks (never past the
last token); after each step `update` publishes the sequence's newly full blocks. With the
offload tiers on, a request waits in the queue while the engine asks the shared store (in
the background) for the blocks past its local hit, a hit may be in host memory, and the KV manager's block moves
(evicted blocks to host, host hits to device) join the plan's ``swap_out`` / ``swap_in``.

In-flight prefix de-duplication (prefix caching on): blocks are cached only after the step
that computed them, so requests sharing a prefix admitted in the same step (or while one
of them is still prefilling in chunks) would each compute it. Rule: a waiting request
whose next uncached full block (its key, salt included) is a block some running sequence
still in prefill has not computed yet (`InflightBlocks`) is left waiting for this step,
and admission goes on with the requests behind it. It cannot starve: the in-flight
sequence is running, so its chunks are scheduled before any admission and its blocks are
cached as they complete; once they are, the waiter's lookup hits them and its next
uncached block moves past the shared part (a key leaves the in-flight set when its owner
computes it, is preempted or finishes). Swapped sequences are never deferred. Each
request's block keys are hashed once (``SeqState.block_keys``) and reused by every lookup
and by publishing, so a deferral costs a queue pop/push and one dict lookup per block.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence, Set

from trtkv.runtime.kv.block_tables import BlockCopy
from trtkv.runtime.kv.manager import KVCacheManager
from trtkv.runtime.plan import NO_STOP_IDS, ScheduledSeq, SeqUpdate, StepPlan, StopRule
from trtkv.runtime.scheduler.admission import Admission
from trtkv.runtime.scheduler.config import SchedulerConfig
from trtkv.runtime.scheduler.inflight import InflightBlocks
from trtkv.runtime.scheduler.policy import SchedulingPolicy
from trtkv.runtime.scheduler.registry import SeqRegistry
from trtkv.runtime.scheduler.sequence import SeqState, SeqStatus, SeqView
from trtkv.runtime.scheduler.speculative import accept_draft, add_drafts
from trtkv.runtime.scheduler.stats import Counters, SchedulerStats
from trtkv.runtime.scheduler.step import StepBuilder

_RUNNING = SeqStatus.RUNNING


class Scheduler:
    """Continuous-batching scheduler over a paged KV cache; see the module docstring.

    Args:
        config: batching limits and preemption mode.
        kv: the KV cache manager this scheduler allocates from (it owns the block tables).
        awaiting_store: ids of requests whose shared-store lookup is in flight (the engine's
            `TierTransfer.pending`); they are not admitted until it returns.
    """

    def __init__(self, config: SchedulerConfig, kv: KVCacheManager,
                 awaiting_store: Set[str] = frozenset()) -> None:
        self.config = config
        self.kv = kv
        self._reg = SeqRegistry()
        self._in_flight: StepPlan | None = None
        self._inflight_blocks = InflightBlocks(kv.block_size)
        self._policy = SchedulingPolicy(config.scheduling_policy, config.aging_tokens_per_s)
        self._counts = Counters()
        self._admission = Admission(config, kv, self._reg, self._inflight_blocks, self._counts,
                                    awaiting_store, self._release_held)

    # -- requests -------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        *,
        priority: int = 0,
        arrival_time: float | None = None,
        cache_salt: str | None = None,
        n: int = 1,
        stop: StopRule = NO_STOP_IDS,
    ) -> int:
        """Queue a request; it runs when it fits.

        Args:
            request_id: unique among unfinished requests.
            prompt_ids: the prompt's token ids (non-empty).
            max_new_tokens: the most tokens the engine will sample for it (>= 1).
            priority: lower numbers are served first and preempted last (policy ``priority``).
            arrival_time: orders equal priorities and ages short-first (default: now,
                ``time.monotonic()``).
            cache_salt: separates prefix-cache namespaces (e.g. per tenant).
            n: sequences the request forks into after its prompt (parallel sampling); it is
                admitted only when n of ``max_num_seqs`` are free.
            stop: its token-id stop rule (stop ids, min_tokens); every sequence also ends on
                its ``max_new_tokens``-th token. `update` applies it and frees what it ends.

        Returns:
            The new sequence's id.

        Raises:
            InvalidRequestError: empty prompt, ``max_new_tokens < 1`` or a duplicate id.
            RequestRejectedError: reason ``too_long``, ``kv_capacity``, ``too_many_seqs``
                (n > max_num_seqs) or ``queue_full``; nothing changed.
        """
        self._admission.check_new(request_id, len(prompt_ids), max_new_tokens, n)
        if arrival_time is None:
            arrival_time = time.monotonic()
        rank = self._policy.rank(priority, arrival_time, len(prompt_ids), max_new_tokens)
        seq = self._reg.new_seq(request_id, list(prompt_ids), max_new_tokens, priority, rank,
                                cache_salt, stop)
        seq.num_samples = n
        return seq.seq_id

    def finish(self, seq_id: int) -> None:
        """The engine decided on its text that the sequence stopped (a stop string, a complete
        grammar): free its blocks and forget it. Token-id stops need no call (`update`).

        Raises:
            KeyError: unknown (or already finished/aborted) sequence.
        """
        seq = self._reg.seqs.get(seq_id)
        if seq is None:
            raise KeyError(f"unknown seq {seq_id} (already finished or aborted?)")
        self._drop(seq, SeqStatus.FINISHED)

    def abort_request(self, request_id: str) -> list[int]:
        """Drop every sequence of a request in any state; unknown ids are a no-op.

        Returns:
            The ids of the sequences dropped.
        """
        seq_ids = list(self._reg.requests.get(request_id, ()))
        for seq_id in seq_ids:
            self._drop(self._reg.seqs[seq_id], SeqStatus.ABORTED)
        return seq_ids

    def get_seq(self, seq_id: int) -> SeqView:
        """A snapshot of a live sequence. Raises KeyError once finished or aborted."""
        return self._reg.seqs[seq_id].view()

    def has_unfinished(self) -> bool:
        return bool(self._reg.seqs)

    @property
    def num_waiting(self) -> int:
        return len(self._reg.waiting)

    @property
    def num_running(self) -> int:
        return len(self._reg.running)

    @property
    def num_swapped(self) -> int:
        return len(self._reg.swapped)

    def num_running_requests(self) -> int:
        """Requests with a running sequence (a request with n > 1 runs several)."""
        return len({seq.request_id for seq in self._reg.running})

    def stats(self) -> SchedulerStats:
        c = self._counts
        return SchedulerStats(
            num_waiting=len(self._reg.waiting), num_running=len(self._reg.running),
            num_swapped=len(self._reg.swapped), num_preemptions_recompute=c.recompute,
            num_preemptions_swap=c.swap, num_rejected_too_long=c.too_long,
            num_rejected_kv_capacity=c.kv_capacity, num_rejected_queue_full=c.queue_full,
            num_chunked_prefills=c.chunked, num_steps=c.steps,
            num_prefix_queries=c.prefix_queries, num_prefix_query_tokens=c.prefix_query_tokens,
            num_prefix_hit_tokens=c.prefix_hit_tokens,
            kv=self.kv.usage(), num_prefix_deferrals=c.prefix_deferred,
            num_rejected_too_many_seqs=c.too_many_seqs, num_long_prefill_deferrals=c.long_deferred,
            num_store_deferrals=c.store_deferred,
        )

    # -- one step -------------------------------------------------------------------------

    def schedule(self, drafts: Mapping[int, Sequence[int]] | None = None) -> StepPlan:
        """Plan the next step. Call `update` with the plan before scheduling again.

        Args:
            drafts: speculative decoding: draft tokens per decoding sequence (see
                `decoding_seqs`). Once decodes, prefill chunks and admissions are planned, a
                decode takes as many as the token budget left, its remaining
                ``max_new_tokens`` and the free KV blocks allow (``ScheduledSeq.num_draft``);
                drafts never preempt anything nor keep anything else from running.

        Raises:
            RuntimeError: the previous non-empty plan was not passed to `update`.
        """
        if self._in_flight is not None:
            raise RuntimeError("call update() with the previous plan before schedule()")
        step = StepBuilder(self.config.max_num_batched_tokens, self.config.enable_chunked_prefill)
        decoding: list[SeqState] = []
        prefilling: list[SeqState] = []
        for seq in self._reg.running:
            (decoding if seq.is_decoding else prefilling).append(seq)
        self._schedule_decodes(decoding, step)
        for seq in prefilling:
            if seq.status is _RUNNING:  # not preempted earlier in this step
                self._schedule_prefill(seq, step)
        if not step.preempted:
            threshold = self.config.long_prefill_threshold
            self._admission.admit(step, sum(s.prompt_len > threshold for s in prefilling) if threshold else 0)
        if drafts:  # last: drafts take only the budget and blocks everything else left
            add_drafts(step, drafts, self._reg.seqs, self.kv)
        offload_out, offload_in = self.kv.tiers.take_moves()
        step.swap_out += offload_out
        step.swap_in += offload_in
        plan = step.plan()
        if not plan.is_empty:
            self._in_flight = plan
            self._counts.steps += 1
        return plan

    def update(self, plan: StepPlan, sampled: Mapping[int, Sequence[int]]) -> list[SeqUpdate]:
        """Record that the backend ran ``plan`` and sampled ``sampled``.

        Args:
            plan: the plan returned by the last `schedule()`.
            sampled: for each live sequence of the plan with ``sample=True``, its new tokens:
                the first extends it, each further one forks a child sequence that shares its
                blocks (parallel sampling). No tokens: the sequence is held (`extend` gives
                them later: a beam of beam search). For a sequence with a draft (``num_draft``): the
                accepted draft prefix then one token, all extending it; the rejected rest
                is rolled back (its KV slots and the blocks past them are freed, and no
                block holding a rejected token is published to the prefix cache).

        Returns:
            One `SeqUpdate` per token of ``sampled``: a sequence's own, then its forks'
            (``parent_seq_id`` set), in the order of ``plan.seqs``. A sequence its token
            ended (`StopRule`) has ``finish_reason`` set and is already freed.

        Raises:
            RuntimeError: ``plan`` is not the plan in flight.
            ValueError: ``sampled`` lacks a sampling sequence, names one that did not
                sample, or does not start a draft's sequence with an accepted prefix of it;
                nothing changed.
        """
        if plan is not self._in_flight and not (plan.is_empty and self._in_flight is None):
            raise RuntimeError("update() got a plan other than the one last scheduled")
        live = [s for s in plan.seqs if s.seq_id in self._reg.seqs]
        samplers = {s.seq_id for s in live if s.sample}
        if sampled.keys() != samplers:
            extra = sampled.keys() - samplers
            missing = [i for i in samplers if i not in sampled]
            raise ValueError(f"sampled must give tokens for exactly the sampling seqs of the "
                             f"plan: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for s in live:
            if s.num_draft:
                tokens = sampled[s.seq_id]
                if not tokens or len(tokens) > s.num_draft + 1 or tuple(tokens[:-1]) != s.token_ids[1:len(tokens)]:
                    raise ValueError(f"seq {s.seq_id}: {list(tokens)} is not an accepted prefix of its draft "
                                     f"{list(s.token_ids[1:])} and one token")
        self._in_flight = None
        updates: list[SeqUpdate] = []
        seqs, caching = self._reg.seqs, self.kv.enable_prefix_caching
        for s in live:
            seq = seqs[s.seq_id]
            assert seq.num_computed == s.start_pos, f"seq {seq.seq_id} moved during the step"
            if s.num_draft:
                self._accept(seq, s, sampled[s.seq_id], updates)
                continue
            seq.num_computed += len(s.token_ids)
            if caching:  # before forking, so that children inherit the keys
                self.kv.cache_blocks(seq.seq_id, seq.token_ids, seq.num_computed, seq.block_keys)
                self._inflight_blocks.advance(seq.seq_id, seq.num_computed)
            if not s.sample:
                continue
            tokens = sampled[s.seq_id]
            if not tokens:
                seq.held = True
                continue
            token = tokens[0]
            if len(tokens) == 1:  # the hot path: one token, and the sequence goes on
                token_ids = seq.token_ids
                token_ids.append(token)
                num_out = len(token_ids) - seq.prompt_len
                if num_out < seq.max_new_tokens and token not in seq.stop.stop_ids:
                    updates.append(SeqUpdate(seq.seq_id, seq.request_id, token, None, 0, seq.num_cached_tokens))
                else:
                    updates.append(self._stop_check(seq, token, None, 0, seq.num_cached_tokens))
                continue
            updates += self._branch(seq, tokens)
        return updates

    def extend(self, seq_id: int, tokens: Sequence[int]) -> list[SeqUpdate]:
        """Give a held sequence (one `update` gave no tokens) its next tokens: the first
        extends it, each further one forks a child (sharing its blocks; a preempted parent's
        children wait to be computed). Returns their `SeqUpdate`s, as `update` does.

        Raises:
            KeyError: unknown sequence. ValueError: not held, or no tokens.
        """
        seq = self._reg.seqs[seq_id]
        if not seq.held or not tokens:
            raise ValueError(f"seq {seq_id} is not held for tokens, or no tokens were given")
        seq.held = False
        return self._branch(seq, tokens)

    def _branch(self, seq: SeqState, tokens: Sequence[int]) -> list[SeqUpdate]:
        """``tokens[0]`` extends ``seq``, each further one forks a child from its state before
        it (sharing its blocks; a parent without device blocks gets waiting children)."""
        cached = seq.num_cached_tokens
        children = [self._fork(seq, t) if seq.status is _RUNNING else self._reg.fork_waiting(seq, t)
                    for t in tokens[1:]]  # before the parent's token
        seq.num_samples = 1
        seq.token_ids.append(tokens[0])
        updates = [self._stop_check(seq, tokens[0], None, 0, cached)]
        for i, child in enumerate(children, start=1):
            updates.append(self._stop_check(child, tokens[i], seq.seq_id, i, cached))
        return updates

    def _accept(self, seq: SeqState, s: ScheduledSeq, tokens: Sequence[int], updates: list[SeqUpdate]) -> None:
        kept = accept_draft(seq, s, tokens, self.kv)
        cached = seq.num_cached_tokens
        updates.extend(SeqUpdate(seq.seq_id, seq.request_id, tokens[j], None, j, cached) for j in range(kept - 1))
        updates.append(self._stop_check(seq, tokens[kept - 1], None, kept - 1, cached))

    def _stop_check(self, seq: SeqState, token: int, parent: int | None, index: int,
                    cached: int) -> SeqUpdate:
        """``seq``'s update for its new last ``token``; frees it when its `StopRule` ends it."""
        done = seq.stop.check(token, len(seq.token_ids) - seq.prompt_len, seq.max_new_tokens)
        if done is None:
            return SeqUpdate(seq.seq_id, seq.request_id, token, parent, index, cached)
        self._drop(seq, SeqStatus.FINISHED)
        return SeqUpdate(seq.seq_id, seq.request_id, token, parent, index, cached, *done)

    def _schedule_decodes(self, seqs: list[SeqState], step: StepBuilder) -> None:
        # The hot path (every running sequence, every step): kept flat on purpose.
        try_allocate, block_ids = self.kv.try_allocate, self.kv.block_ids
        max_num_seqs, scheduled, decodes = self.config.max_num_seqs, step.scheduled, step.decodes
        for seq in seqs:
            if seq.status is not _RUNNING:  # preempted earlier in this step
                continue
            if step.token_budget == 0 or len(scheduled) >= max_num_seqs:
                return
            seq_id, start = seq.seq_id, seq.num_computed
            copies = try_allocate(seq_id, start + 1)
            if copies is None:
                copies = self._make_room(seq, start + 1, True, step)
                if copies is None:
                    continue
            if copies:
                step.copies.extend(copies)
            decodes.append(ScheduledSeq(seq_id, (seq.token_ids[-1],), start, block_ids(seq_id), True, False,
                                        seq.request_id))
            scheduled.add(seq_id)
            step.token_budget -= 1

    def decoding_seqs(self) -> list[tuple[int, str, list[int], int]]:
        """Running sequences that decode next step, for a draft proposer: (seq_id,
        request_id, token ids (read only), most draft tokens it can use: its remaining
        max_new_tokens less one)."""
        return [(s.seq_id, s.request_id, s.token_ids, s.draft_room) for s in self._reg.running if s.is_decoding]

    def _schedule_prefill(self, seq: SeqState, step: StepBuilder) -> None:
        if step.token_budget == 0 or len(step.scheduled) >= self.config.max_num_seqs:
            return
        num_tokens = step.chunk_size(seq.num_tokens - seq.num_computed)
        if num_tokens == 0:
            return
        target = seq.num_computed + num_tokens
        copies = self.kv.try_allocate(seq.seq_id, target)
        if copies is None:
            copies = self._make_room(seq, target, False, step)
            if copies is None:
                return
        step.copies.extend(copies)
        step.add(seq, num_tokens, False, self.kv, self._counts)

    def _make_room(self, seq: SeqState, target: int, decoding: bool,
                   step: StepBuilder) -> list[BlockCopy] | None:
        """Preempt victims until ``seq`` can hold ``target`` tokens; None if it cannot run."""
        while True:
            victim = next(v for v in reversed(self._reg.running) if v.seq_id not in step.scheduled)
            if victim is seq and not decoding:
                return None  # a prefill waits rather than preempt itself or a better sequence
            self._preempt(victim, step)
            if victim is seq:
                return None
            copies = self.kv.try_allocate(seq.seq_id, target)
            if copies is not None:
                return copies

    def _release_held(self, step: StepBuilder) -> bool:
        """Preempt the last-ranked idle held sequence (swap or recompute, as configured);
        admission does not bring it back until it is extended."""
        victim = next((s for s in reversed(self._reg.running) if s.held and s.seq_id not in step.scheduled), None)
        if victim is None:
            return False
        self._preempt(victim, step)
        return True

    def _preempt(self, seq: SeqState, step: StepBuilder) -> None:
        seq.num_preemptions += 1
        self._inflight_blocks.remove(seq.seq_id)
        step.preempted.append(seq.seq_id)
        if self.config.preemption_mode == "swap" and self.kv.can_swap_out(seq.seq_id):
            step.swap_out.extend(self.kv.swap_out(seq.seq_id))
            self._reg.requeue(seq, SeqStatus.SWAPPED)
            self._counts.swap += 1
        else:
            self.kv.free(seq.seq_id)
            seq.num_computed = 0
            seq.num_cached_tokens = 0
            self._reg.requeue(seq, SeqStatus.WAITING)
            self._counts.recompute += 1

    # -- bookkeeping ----------------------------------------------------------------------

    def _fork(self, parent: SeqState, token: int) -> SeqState:
        child = self._reg.fork(parent, token)
        self.kv.fork(parent.seq_id, child.seq_id)
        return child

    def _drop(self, seq: SeqState, status: SeqStatus) -> None:
        self._inflight_blocks.remove(seq.seq_id)
        if self.kv.has_seq(seq.seq_id):
            self.kv.free(seq.seq_id)
        self._reg.drop(seq, status)

    def check_integrity(self) -> None:
        """Assert scheduler and KV invariants (between steps); for tests.

        Raises:
            AssertionError: naming the broken invariant.
        """
        self.kv.check_integrity()
        plan = self._in_flight
        self._reg.check_integrity(self.kv, {s.seq_id: s.num_tokens for s in plan.seqs} if plan else {})
        self._inflight_blocks.check_integrity(
            {s.seq_id for s in self._reg.running if not s.is_decoding})

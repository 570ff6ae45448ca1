"""Admission: which waiting or swapped sequences join the running set this step.

One stage of `Scheduler.schedule()` (see the scheduler's module docstring for the rules):
candidates come in policy order; admission stops at the first that does not fit, skips (and
requeues after the step) one deferred by in-flight prefix de-duplication or by the
long-prefill throttle, or whose shared-store lookup (run in the background by the engine's
`TierTransfer`, never here) has not returned, swaps a swapped sequence back in, starts a
waiting one after its prefix-cache hit, and keeps the slots ``n > 1`` requests fork into.
"""

from __future__ import annotations

from collections.abc import Callable, Set

from trtkv.errors import InvalidRequestError, RequestRejectedError
from trtkv.runtime.kv.manager import KVCacheManager
from trtkv.runtime.scheduler.config import SchedulerConfig
from trtkv.runtime.scheduler.inflight import InflightBlocks
from trtkv.runtime.scheduler.policy import is_long_prefill
from trtkv.runtime.scheduler.queue import SeqQueue
from trtkv.runtime.scheduler.registry import SeqRegistry
from trtkv.runtime.scheduler.sequence import SeqState, SeqStatus
from trtkv.runtime.scheduler.stats import Counters
from trtkv.runtime.scheduler.step import StepBuilder


class Admission:
    """The admission stage over the scheduler's registry and KV manager."""

    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, reg: SeqRegistry,
                 inflight: InflightBlocks, counts: Counters, awaiting_store: Set[str],
                 release_held: Callable[[StepBuilder], bool] | None = None) -> None:
        self.config, self.kv, self.reg, self.inflight, self.counts = config, kv, reg, inflight, counts
        self.awaiting_store = awaiting_store
        self.release_held = release_held
        """Preempts one idle held sequence (a beam waiting for its siblings) to make room;
        False when there is none."""

    def check_new(self, request_id: str, num_prompt: int, max_new_tokens: int, n: int) -> None:
        """The one admission check of a new request (what can never be served, or not now).

        Raises:
            InvalidRequestError: empty prompt, ``max_new_tokens < 1`` or a duplicate id.
            RequestRejectedError: ``too_long``, ``kv_capacity``, ``too_many_seqs`` or
                ``queue_full`` (counted).
        """
        if not num_prompt:
            raise InvalidRequestError("the prompt is empty; give at least one token")
        if max_new_tokens < 1:
            raise InvalidRequestError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if request_id in self.reg.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        total, config = num_prompt + max_new_tokens, self.config
        if total > config.max_model_len:
            self._reject("too_long", f"prompt ({num_prompt}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"max_model_len ({config.max_model_len}); shorten the prompt or lower max_new_tokens")
        if self.kv.num_blocks_for(total) > self.kv.num_blocks:
            self._reject("kv_capacity", f"{total} tokens need {self.kv.num_blocks_for(total)} KV blocks but "
                         f"the pool has {self.kv.num_blocks}; lower max_new_tokens or give the KV cache more memory")
        if n > config.max_num_seqs:
            self._reject("too_many_seqs", f"n={n} sequences exceed max_num_seqs ({config.max_num_seqs}); "
                         "lower n or raise --max-num-seqs")
        if len(self.reg.waiting) >= config.max_num_queued_requests:
            self._reject("queue_full", f"{len(self.reg.waiting)} requests are already waiting; retry later")

    def _reject(self, reason: str, message: str) -> None:
        self.counts.reject(reason)
        raise RequestRejectedError(reason, message)

    def admit(self, step: StepBuilder, num_long: int) -> None:
        """Admit what fits; ``num_long``: long prefills running (see `policy`)."""
        deferred: list[tuple[SeqState, SeqQueue]] = []
        try:
            self._admit_until_full(step, num_long, deferred)
        finally:
            for seq, queue in deferred:  # same keys, so their order in the queue is unchanged
                queue.push(seq)

    def _admit_until_full(self, step: StepBuilder, num_long: int,
                          deferred: list[tuple[SeqState, SeqQueue]]) -> None:
        kv, reg, config, counts = self.kv, self.reg, self.config, self.counts
        threshold = config.long_prefill_threshold
        # Slots promised to running sequences that will fork (n > 1) once their prompt is done.
        reserved = sum(s.num_samples - 1 for s in reg.running if s.num_samples > 1)
        while step.token_budget > 0 and len(reg.running) + reserved < config.max_num_seqs:
            candidate = reg.next_candidate()
            if candidate is None:
                return
            seq, queue = candidate
            if seq.held:  # preempted while held: it waits until its beam search extends it
                queue.pop()
                deferred.append((seq, queue))
                continue
            if len(reg.running) + reserved + seq.num_samples > config.max_num_seqs:
                return  # its forks would not fit: wait until enough sequences finish
            is_long = threshold > 0 and is_long_prefill(seq, threshold)
            if is_long and num_long >= config.max_long_prefills:
                queue.pop()
                deferred.append((seq, queue))
                counts.long_deferred += 1
                continue
            if seq.status is SeqStatus.SWAPPED:
                num_tokens = self._swap_in(seq, queue, step)
            else:
                num_tokens = self._start(seq, queue, step, deferred)
            if num_tokens is None:
                # Idle held sequences pin blocks a sibling may need to produce its row: release
                # one and try again, else wait.
                if self.release_held is not None and self.release_held(step):
                    continue
                return
            if num_tokens < 0:  # deferred: try the next candidate
                continue
            reserved += seq.num_samples - 1
            num_long += is_long
            reg.add_running(seq)
            step.add(seq, num_tokens, seq.is_decoding, kv, counts)

    def _swap_in(self, seq: SeqState, queue: SeqQueue, step: StepBuilder) -> int | None:
        """Bring a swapped sequence back; its first chunk, or None when it does not fit."""
        kv, seq_id = self.kv, seq.seq_id
        num_tokens = step.chunk_size(seq.num_tokens - seq.num_computed)
        if num_tokens == 0 or not kv.can_swap_in(seq_id, num_tokens):
            return None
        queue.pop()
        step.swap_in.extend(kv.swap_in(seq_id))
        kv.allocate(seq_id, seq.num_computed + num_tokens)
        if kv.enable_prefix_caching:
            keys = kv.extend_block_keys(seq.token_ids, seq.cache_salt, seq.block_keys)
            self.inflight.add(seq_id, keys, seq.num_computed)
        return num_tokens

    def _start(self, seq: SeqState, queue: SeqQueue, step: StepBuilder,
               deferred: list[tuple[SeqState, SeqQueue]]) -> int | None:
        """Start a waiting sequence after its prefix hit; its first chunk, None when it does
        not fit, -1 when deferred (in-flight prefix de-duplication)."""
        kv, seq_id, counts = self.kv, seq.seq_id, self.counts
        if seq.request_id in self.awaiting_store:  # its shared-store lookup is still running
            queue.pop()
            deferred.append((seq, queue))
            counts.store_deferred += 1
            return -1
        caching = kv.enable_prefix_caching
        if caching:
            keys = kv.extend_block_keys(seq.token_ids, seq.cache_salt, seq.block_keys)
            hit = kv.lookup_prefix(seq.token_ids, seq.cache_salt, keys)
            if hit.num_blocks < len(keys) and keys[hit.num_blocks] in self.inflight:
                queue.pop()
                deferred.append((seq, queue))
                counts.prefix_deferred += 1
                return -1
        else:
            hit = kv.lookup_prefix(seq.token_ids, seq.cache_salt)
        start = hit.num_blocks * kv.block_size
        num_tokens = step.chunk_size(seq.num_tokens - start)
        if num_tokens == 0 or not kv.can_allocate(seq_id, start + num_tokens, hit):
            return None
        queue.pop()
        kv.allocate(seq_id, start + num_tokens, hit)
        seq.num_computed = seq.num_cached_tokens = seq.prefill_start = start
        if caching:
            self.inflight.add(seq_id, keys, start)
            counts.prefix_queries += 1
            counts.prefix_query_tokens += seq.num_tokens
            counts.prefix_hit_tokens += start
        return num_tokens

"""`OutputProcessor`: the engine's side of each request, from sampled tokens to `RequestOutput`.

Owns, per request: its sampling state (one generator per completion, the grammar state), the
detokenizer, stop strings (`StopChecker`, text side), logprobs, timings, and building the
`RequestOutput` objects; and the request-level metrics (TTFT, inter-token latency, latency
per output token, end-to-end latency, finished by reason), counted here only, in completions
(choices) for ``finished_by_reason``.

The scheduler owns token ids for the KV cache and applies the token-id `StopRule`; its
`SeqUpdate`s arrive here with their finish already decided. Stops decided on text (a stop
string, a complete grammar) are passed back through ``finish_seq``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtkv.runtime.metrics import EngineMetrics
from trtkv.runtime.outputs import CompletionOutput, RequestOutput
from trtkv.runtime.plan import SeqUpdate, StepPlan
from trtkv.runtime.sampling import (
    GrammarCompiler,
    IncrementalDetokenizer,
    SampleResult,
    SampleRow,
    SamplingParams,
    StopChecker,
    make_generator,
)
from trtkv.runtime.sampling.guided import Guide
from trtkv.runtime.spec.base import Draft


@dataclass
class SeqOutputState:
    """One completion's sampling and text state."""

    index: int
    generator: np.random.Generator
    stop: StopChecker
    detok: IncrementalDetokenizer | None
    guide: Guide | None = None
    output_ids: list[int] = field(default_factory=list)
    """What the sampler's penalties read and the response returns."""
    logprobs: list[tuple[int, float, tuple[tuple[int, float], ...]]] = field(default_factory=list)
    new_ids: list[int] = field(default_factory=list)
    new_text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    last_token_time: float = 0.0
    tail: str = ""  # bytes held back by the detokenizer, released when output ends by length

    @property
    def text(self) -> str:
        return self.stop.text + self.tail


@dataclass
class RequestState:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    is_capped: bool = False
    """``max_new_tokens_cap`` lowered ``params.max_new_tokens``."""
    seqs: dict[int, SeqOutputState] = field(default_factory=dict)
    first_token_time: float | None = None
    first_scheduled_time: float | None = None
    num_cached_tokens: int = 0
    forks: list[SeqOutputState] = field(default_factory=list)
    """n > 1: the completions the first token forks into (indices 1..n-1), made when it is
    sampled and attached to their sequence ids by the step's `SeqUpdate`s."""

    @property
    def finished(self) -> bool:
        return len(self.seqs) >= self.params.n and all(s.finish_reason for s in self.seqs.values())


def _noop(seq_id: int) -> None:
    pass


class OutputProcessor:
    """Per-request output state of one engine; see the module docstring."""

    def __init__(self, tokenizer: Any, eos_token_ids: Sequence[int], grammars: GrammarCompiler,
                 metrics: EngineMetrics) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(eos_token_ids)
        self.grammars = grammars
        self.metrics = metrics
        self.requests: dict[str, RequestState] = {}

    def add(self, req: RequestState, seq_id: int) -> None:
        """Track a request the scheduler accepted as sequence ``seq_id``.

        Raises:
            InvalidRequestError: its grammar does not compile (nothing is kept).
        """
        req.seqs[seq_id] = self._new_seq(req, 0)
        self.requests[req.request_id] = req

    def _new_seq(self, req: RequestState, index: int, guide: Guide | None = None) -> SeqOutputState:
        """Completion ``index``'s state; ``guide``: a forked grammar state (n > 1)."""
        detok = (IncrementalDetokenizer(self.tokenizer, req.prompt_ids, req.params.skip_special_tokens)
                 if self.tokenizer is not None else None)
        if guide is None and req.params.guided is not None:
            guide = self.grammars.guide(req.params.guided)
        return SeqOutputState(index, make_generator(req.params.seed, index),
                              StopChecker(req.params, self.eos_token_ids), detok, guide)

    def sample_rows(self, plan: StepPlan, drafts: Mapping[int, Draft] | None = None,
                    skip: Mapping[int, object] | Set[int] = frozenset()) -> tuple[list[SampleRow], list[int]]:
        """The sampler's rows for the sequences of ``plan`` that sample, and their seq ids.
        A request's first draw also draws its forks' first tokens (n > 1). A sequence with
        a draft in the plan (``num_draft``) gets a row that verifies it (``drafts``: the
        proposals, for the distributions a sampling draft model drew from). Sequences in
        ``skip`` (beams: beam search scores them) get none."""
        rows: list[SampleRow] = []
        seq_ids: list[int] = []
        for s in plan.seqs:
            if not s.sample or s.seq_id in skip:
                continue
            req = self.requests[s.request_id]
            seq = req.seqs[s.seq_id]
            gens = [seq.generator]
            if len(req.seqs) < req.params.n and not seq.output_ids:
                # Each fork starts from the parent's grammar state before the parent's token.
                req.forks = [self._new_seq(req, i, seq.guide.fork() if seq.guide else None)
                             for i in range(1, req.params.n)]
                gens += [f.generator for f in req.forks]
            if s.num_draft:
                proposal = drafts[s.seq_id] if drafts else None
                probs = proposal.probs[: s.num_draft] if proposal is not None and proposal.probs is not None else None
                rows.append(SampleRow(req.params, req.prompt_ids, seq.output_ids, gens, None,
                                      s.token_ids[1:], probs))
            else:
                rows.append(SampleRow(req.params, req.prompt_ids, seq.output_ids, gens, seq.guide))
            seq_ids.append(s.seq_id)
        return rows, seq_ids

    def process(self, updates: Sequence[SeqUpdate], results: dict[int, SampleResult], now: float,
                finish_seq: Callable[[int], None]) -> list[RequestOutput]:
        """Apply a step's updates; returns an output per request that gained tokens (and
        forgets the finished ones). ``finish_seq`` frees a sequence stopped on its text."""
        touched: dict[str, RequestState] = {}
        # Sequences the scheduler ended this step (a later accepted draft token may end one
        # whose text stopped earlier): they are already freed, so finish_seq is not called.
        ended = {u.seq_id for u in updates if u.finish_reason is not None}
        for u in updates:
            req = touched[u.request_id] = self.requests[u.request_id]
            if u.parent_seq_id is None:
                seq = req.seqs[u.seq_id]
                if seq.finish_reason is not None:  # stopped on its text at an earlier accepted draft token
                    continue
                lps = results[u.seq_id].logprobs
            else:
                seq = req.seqs[u.seq_id] = req.forks[u.sample_index - 1]
                lps = results[u.parent_seq_id].logprobs
            self._append(req, u, seq, lps[u.sample_index] if lps else None, now,
                         _noop if u.seq_id in ended else finish_seq)
        outputs = []
        for req in touched.values():
            req.forks = []
            finished = req.finished
            outputs.append(self._output(req, finished))
            if finished:
                self._finish_request(req, now)
        return outputs

    def _append(self, req: RequestState, u: SeqUpdate, seq: SeqOutputState, lp: Any, now: float,
                finish_seq: Callable[[int], None]) -> None:
        token = u.token_id
        if req.first_token_time is None:
            req.first_token_time = now
            self.metrics.observe("time_to_first_token_seconds", now - req.arrival)
            req.num_cached_tokens = u.num_cached_tokens
        elif seq.last_token_time:
            self.metrics.observe("inter_token_latency_seconds", now - seq.last_token_time)
        seq.last_token_time = now
        seq.output_ids.append(token)
        seq.new_ids.append(token)
        if lp is not None:
            seq.logprobs.append((lp.token_id, lp.logprob, tuple(lp.top)))
        if seq.guide is not None:
            seq.guide.consume(token)
        delta = seq.detok.push(token) if seq.detok is not None else ""
        decided = (u.finish_reason, u.stop_reason) if u.finish_reason is not None else None
        update = seq.stop.update(token, delta, decided)
        seq.new_text += update.text_delta
        self.metrics.counters["generation_tokens"] += 1
        reason, stop_reason = update.finish_reason, update.stop_reason
        if reason is None and seq.guide is not None and seq.guide.is_done:
            reason = "stop"  # the grammar is complete: nothing but EOS may follow
            seq.new_text += seq.stop.complete()
        if reason is None:
            return
        if seq.detok is not None and (reason == "length" or update.finish_reason is None):
            seq.tail = seq.detok.flush()
            seq.new_text += seq.tail
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        if u.finish_reason is None:  # stopped on its text: the scheduler still runs it
            finish_seq(u.seq_id)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Forget a request; its final output (finish reason ``abort``), or None if unknown."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        for seq in req.seqs.values():
            if seq.finish_reason is None:
                seq.finish_reason = "abort"
            self.metrics.finished_by_reason[seq.finish_reason] += 1
        # Unit: completions (choices), as when a request finishes: forks not made yet count too.
        self.metrics.finished_by_reason["abort"] += max(0, req.params.n - len(req.seqs))
        return self._output(req, finished=True)

    def _output(self, req: RequestState, finished: bool) -> RequestOutput:
        outs = []
        for seq in sorted(req.seqs.values(), key=lambda s: s.index):
            outs.append(CompletionOutput(
                index=seq.index, token_ids=tuple(seq.output_ids), text=seq.text,
                new_token_ids=tuple(seq.new_ids), new_text=seq.new_text,
                finish_reason=seq.finish_reason, stop_reason=seq.stop_reason,
                logprobs=tuple(seq.logprobs) if req.params.logprobs is not None else None,
                capped=req.is_capped and seq.finish_reason == "length"
                and len(seq.output_ids) >= req.params.max_new_tokens,
            ))
            seq.new_ids, seq.new_text = [], ""
        timings = {"arrival": req.arrival}
        if req.first_token_time is not None:
            timings["ttft"] = req.first_token_time - req.arrival
        return RequestOutput(req.request_id, tuple(req.prompt_ids), tuple(outs), finished,
                             req.num_cached_tokens, timings)

    def _finish_request(self, req: RequestState, now: float) -> None:
        self.requests.pop(req.request_id, None)
        self.metrics.observe("e2e_request_latency_seconds", now - req.arrival)
        n_out = max(len(s.output_ids) for s in req.seqs.values())
        if req.first_token_time is not None and n_out > 1:
            self.metrics.observe("time_per_output_token_seconds", (now - req.first_token_time) / (n_out - 1))
        for seq in req.seqs.values():
            self.metrics.finished_by_reason[seq.finish_reason or "abort"] += 1
        self.metrics.counters["requests_finished"] += 1

    def mark_scheduled(self, plan: StepPlan, start: float) -> None:
        """Record the queue time of requests the step ``plan`` (begun at ``start``) ran first."""
        for s in plan.seqs:
            req = self.requests.get(s.request_id)
            if req is not None and req.first_scheduled_time is None:
                req.first_scheduled_time = start
                self.metrics.observe("queue_time_seconds", start - req.arrival)

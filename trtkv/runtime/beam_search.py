"""Beam search over the paged KV cache: beams are scheduler sequences that share blocks.

A request with ``use_beam_search`` runs as ``n`` sequences (beams). Each step every live
beam yields its next-token log-probabilities; its sequence is *held* (`Scheduler.update`
with no tokens) until all beams of the request have theirs, then `BeamSearch` decides: the
top ``2n`` (more with several end tokens) continuations of all beams by cumulative
log-probability; those ending in an end token (or at ``max_new_tokens``) among the top
``n`` become finished hypotheses, scored ``logprob_sum / generated_length **
length_penalty``; the best ``n`` that go on are the next beams. A beam with several
continuations forks (`Scheduler.extend`: children share its blocks, copy-on-write), a beam
with none is freed (only blocks no other beam shares go back). Stopping follows
``early_stopping`` as Hugging Face transformers' ``generate(num_beams=n, do_sample=False)``
does, so its output is the same.

A beam preempted while the others wait is recomputed or swapped like any sequence; the
decision waits for its row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtkv.runtime.metrics import EngineMetrics
from trtkv.runtime.outputs import CompletionOutput, RequestOutput
from trtkv.runtime.sampling import SamplingParams
from trtkv.runtime.sampling.processors import log_softmax
from trtkv.runtime.scheduler.scheduler import Scheduler

_DEAD = -1.0e9  # the score of a continuation that cannot go on (as transformers marks it)


@dataclass
class Hypothesis:
    token_ids: tuple[int, ...]
    score: float


@dataclass
class BeamRequest:
    """One beam-search request's state."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    end_ids: frozenset[int]
    arrival: float
    beams: list[tuple[int, float]]
    """(seq id, cumulative logprob) of the running beams, best first."""
    rows: dict[int, np.ndarray] = field(default_factory=dict)
    """Next-token log-probabilities of the beams that computed theirs this round."""
    finished: list[Hypothesis] = field(default_factory=list)
    """At most n, best first."""
    generated: int = 0
    improvable: bool = True
    """transformers' early-stop heuristic: a running beam may still beat the worst finished."""
    first_token_time: float | None = None


class BeamSearch:
    """The beam-search requests of one engine; see the module docstring."""

    def __init__(self, scheduler: Scheduler, tokenizer: Any, eos_token_ids: Sequence[int],
                 metrics: EngineMetrics) -> None:
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(eos_token_ids)
        self.metrics = metrics
        self.requests: dict[str, BeamRequest] = {}
        self._of_seq: dict[int, BeamRequest] = {}

    def add(self, request_id: str, prompt_ids: list[int], params: SamplingParams, seq_id: int,
            arrival: float) -> None:
        end = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else frozenset(self.eos_token_ids))
        req = BeamRequest(request_id, prompt_ids, params, end, arrival, [(seq_id, 0.0)])
        self.requests[request_id] = req
        self._of_seq[seq_id] = req

    def owns(self, seq_id: int) -> bool:
        return seq_id in self._of_seq

    def step(self, rows: dict[int, np.ndarray], now: float) -> list[RequestOutput]:
        """Take this step's logits rows of beams (held by the scheduler); decide every request
        whose beams all have theirs. Returns the outputs of the requests that finished."""
        touched: dict[str, BeamRequest] = {}
        for seq_id, logits in rows.items():
            req = self._of_seq[seq_id]
            req.rows[seq_id] = log_softmax(logits[None, :].astype(np.float64))[0]
            touched[req.request_id] = req
        outputs = []
        for req in touched.values():
            if len(req.rows) == len(req.beams):
                if req.first_token_time is None:
                    req.first_token_time = now
                    self.metrics.observe("time_to_first_token_seconds", now - req.arrival)
                if self._advance(req):
                    outputs.append(self._finish(req, now))
        return outputs

    def _advance(self, req: BeamRequest) -> bool:
        """One beam-search step of ``req``; True when it is done."""
        n, p = req.params.n, req.params
        acc = np.stack([req.rows[seq_id] + score for seq_id, score in req.beams])
        vocab = acc.shape[1]
        flat = acc.ravel()
        k = min(max(2, 1 + len(req.end_ids)) * n, flat.size)
        top = np.argsort(-flat, kind="stable")[:k]
        parents, tokens, logps = (top // vocab).tolist(), (top % vocab).tolist(), flat[top]
        length = req.generated + 1
        hits = [t in req.end_ids or length >= p.max_new_tokens for t in tokens]
        running = logps + np.where(hits, _DEAD, 0.0)
        order = np.argsort(-running, kind="stable")[:n].tolist()
        # Only the top n continuations may finish (the rest back up the running beams); no
        # check for a full set with early stopping or an unimprovable search is needed here:
        # either ended the search at the previous step.
        new = [Hypothesis((*self.scheduler.get_seq(req.beams[parents[r]][0]).output_ids, tokens[r]),
                          float(logps[r]) / length ** p.length_penalty)
               for r in range(min(n, k)) if hits[r]]
        if new:
            merged = req.finished + new
            merged.sort(key=lambda h: -h.score)  # stable: earlier hypotheses win ties
            req.finished = merged[:n]
        req.generated = length
        req.rows.clear()
        self.metrics.counters["generation_tokens"] += len(req.beams)
        if len(req.finished) >= n:
            best_len = p.max_new_tokens if p.early_stopping == "never" and p.length_penalty > 0 else length
            best_possible = float(running[order[0]]) / best_len ** p.length_penalty
            req.improvable = req.improvable and best_possible > min(h.score for h in req.finished)
        if not req.improvable or (len(req.finished) >= n and p.early_stopping is True) or all(hits):
            return True
        self._reshape(req, [(parents[i], tokens[i], float(running[i])) for i in order])
        return False

    def _reshape(self, req: BeamRequest, chosen: list[tuple[int, int, float]]) -> None:
        """Make the scheduler's sequences the chosen beams: drop the beams nobody continues
        first (freeing their own blocks), then extend / fork the others."""
        children: dict[int, list[tuple[int, float]]] = {}
        for parent, token, score in chosen:
            children.setdefault(parent, []).append((token, score))
        for i, (seq_id, _) in enumerate(req.beams):
            if i not in children:
                self.scheduler.finish(seq_id)
                del self._of_seq[seq_id]
        beams: dict[tuple[int, int], tuple[int, float]] = {}
        for parent, kids in children.items():
            seq_id = req.beams[parent][0]
            for j, u in enumerate(self.scheduler.extend(seq_id, [t for t, _ in kids])):
                beams[(parent, j)] = (u.seq_id, kids[j][1])
                self._of_seq[u.seq_id] = req
        seen: dict[int, int] = {}
        ordered = []
        for parent, _, _ in chosen:  # best first, as chosen
            j = seen.get(parent, 0)
            seen[parent] = j + 1
            ordered.append(beams[(parent, j)])
        req.beams = ordered

    def _finish(self, req: BeamRequest, now: float) -> RequestOutput:
        self._forget(req)
        outs = []
        for i, h in enumerate(req.finished):
            ended = bool(h.token_ids) and h.token_ids[-1] in req.end_ids
            text = ""
            if self.tokenizer is not None:
                text = self.tokenizer.decode(list(h.token_ids), skip_special_tokens=req.params.skip_special_tokens)
            reason = "stop" if ended else "length"
            outs.append(CompletionOutput(
                index=i, token_ids=h.token_ids, text=text, new_token_ids=h.token_ids, new_text=text,
                finish_reason=reason,
                stop_reason=h.token_ids[-1] if ended and h.token_ids[-1] not in self.eos_token_ids else None,
                logprobs=None, capped=False))
            self.metrics.finished_by_reason[reason] += 1
        self.metrics.counters["requests_finished"] += 1
        self.metrics.observe("e2e_request_latency_seconds", now - req.arrival)
        timings = {"arrival": req.arrival}
        if req.first_token_time is not None:
            timings["ttft"] = req.first_token_time - req.arrival
        return RequestOutput(req.request_id, tuple(req.prompt_ids), tuple(outs), True, 0, timings)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Forget a request (the caller frees its sequences); its output so far."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        self._forget(req)
        outs = tuple(CompletionOutput(index=i, token_ids=h.token_ids, text="", new_token_ids=(), new_text="",
                                      finish_reason="abort", stop_reason=None, logprobs=None, capped=False)
                     for i, h in enumerate(req.finished))
        self.metrics.finished_by_reason["abort"] += req.params.n  # unit: completions, as for other requests
        return RequestOutput(req.request_id, tuple(req.prompt_ids), outs, True, 0, {"arrival": req.arrival})

    def _forget(self, req: BeamRequest) -> None:
        self.requests.pop(req.request_id, None)
        self.scheduler.abort_request(req.request_id)
        for seq_id in [s for s, r in self._of_seq.items() if r is req]:
            del self._of_seq[seq_id]

"""The engine: one `step()` = schedule, run the backend, sample, stop, report.

Owns the requests (sampling state, detokenizers, stop checkers, timings) and wires the
scheduler (which owns batching and, through the KV manager, the blocks) to a backend, and
the KV tiers (host offload, shared store) to both through `TierTransfer`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtkv.errors import InvalidRequestError, RequestRejectedError
from trtkv.manifest import Manifest
from trtkv.runtime.backends import BaseBackend, create_backend
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.kv.manager import KVCacheManager
from trtkv.runtime.metrics import EngineMetrics
from trtkv.runtime.outputs import CompletionOutput, RequestOutput
from trtkv.runtime.plan import SeqUpdate, StepPlan
from trtkv.runtime.sampling import (
    GrammarCompiler,
    IncrementalDetokenizer,
    Sampler,
    SampleRow,
    SamplingParams,
    StopChecker,
    make_generator,
)
from trtkv.runtime.sampling.guided import Guide
from trtkv.runtime.scheduler.scheduler import Scheduler
from trtkv.runtime.tiers.transfer import TierTransfer, create_store


@dataclass
class _SeqOut:
    """The engine's side of one sequence: sampling and text state."""

    index: int
    generator: np.random.Generator
    stop: StopChecker
    detok: IncrementalDetokenizer | None
    guide: Guide | None = None
    output_ids: list[int] = field(default_factory=list)
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
class _Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    seqs: dict[int, _SeqOut] = field(default_factory=dict)
    first_token_time: float | None = None
    first_scheduled_time: float | None = None
    num_cached_tokens: int = 0
    is_capped: bool = False
    """``max_new_tokens_cap`` lowered ``params.max_new_tokens``."""
    forks: list[_SeqOut] = field(default_factory=list)
    """n > 1: the sequences the first token forks into (indices 1..n-1), made when it is
    sampled and attached to their sequence ids by `Scheduler.update`."""

    @property
    def finished(self) -> bool:
        return len(self.seqs) >= self.params.n and all(s.finish_reason for s in self.seqs.values())


class Engine:
    """Continuous-batching engine over one backend. Not thread-safe: one caller steps it.

    Args:
        model_dir: an exported model directory (`trtkv export`).
        config: engine options.
        backend: an already-built backend (tests, benchmarks); default: from ``config``.
    """

    def __init__(self, model_dir: str | Path, config: EngineConfig | None = None,
                 backend: BaseBackend | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.config = config = config or EngineConfig()
        self.manifest = Manifest.load(self.model_dir, require_onnx=config.backend != "tensorrt")
        sched_config = config.scheduler_config(self.manifest)
        plain = config.backend_config()
        kv_manifest = plain.resolve_manifest(self.manifest)
        config.check_kv_scales(kv_manifest)
        num_offload = config.resolve_offload_blocks(
            kv_manifest, plain.resolve_block_size(kv_manifest), sched_config.max_model_len)
        self.backend = backend or create_backend(str(self.model_dir), config.backend_config(num_offload))
        # A backend built by the caller has the host blocks it has: the swap tier's come first.
        num_offload = max(0, self.backend.num_host_blocks - config.num_host_blocks)
        store = create_store(self.model_dir, config, self.backend) if num_offload else None
        self.kv = KVCacheManager(
            self.backend.num_blocks, self.backend.block_size,
            num_host_blocks=self.backend.num_host_blocks - num_offload,
            enable_prefix_caching=config.enable_prefix_caching,
            num_offload_blocks=num_offload if config.enable_prefix_caching else 0, remote=store,
        )
        self.tiers = TierTransfer(self.kv, self.backend, store)
        self.scheduler = Scheduler(sched_config, self.kv, awaiting_store=self.tiers.pending)
        self.eos_token_ids = self.manifest.eos_token_ids
        self.sampler = Sampler(self.eos_token_ids)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.grammars = GrammarCompiler(self.tokenizer, self.manifest.vocab_size, self.eos_token_ids)
        self.metrics = EngineMetrics()
        self._requests: dict[str, _Request] = {}
        self._ids = itertools.count()

    # -- requests -------------------------------------------------------------------------
    def add_request(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
                    request_id: str | None = None, priority: int = 0,
                    cache_salt: str | None = None) -> str:
        """Queue a request (text or token ids). Returns its id.

        ``max_new_tokens`` above ``EngineConfig.max_new_tokens_cap`` is lowered to the cap; an
        output the cap ends says so (``CompletionOutput.capped``).

        Raises:
            InvalidRequestError: empty prompt, token ids out of range, text without a tokenizer.
            RequestRejectedError: can never be served (``too_long``, ``kv_capacity``) or the
                queue is full (``queue_full``); nothing is kept.
        """
        params = params or SamplingParams()
        requested = params.max_new_tokens
        params = params.with_max_new_tokens_cap(self.config.max_new_tokens_cap)
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        prompt_ids = self.encode(prompt)
        now = time.monotonic()
        req = _Request(request_id, prompt_ids, params, now, is_capped=params.max_new_tokens < requested)
        try:
            # The scheduler is the one admission check (length, capacity, n, queue), so the
            # engine's and the scheduler's rejection counts always agree.
            seq_id = self.scheduler.add_request(
                request_id, prompt_ids, params.max_new_tokens, priority=priority,
                arrival_time=now, cache_salt=cache_salt, n=params.n,
            )
            try:
                first = self._new_seq_out(req, 0)
            except BaseException:
                self.scheduler.abort_request(request_id)  # nothing is kept
                raise
        except RequestRejectedError as exc:
            self.metrics.rejected_by_reason[exc.reason] += 1
            raise
        req.seqs[seq_id] = first
        self._requests[request_id] = req
        self.tiers.prefetch(request_id, prompt_ids, cache_salt)
        self.metrics.counters["requests_added"] += 1
        return request_id

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequestError(
                    f"{self.model_dir} has no tokenizer files; pass token ids instead of text"
                )
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidRequestError(
                    "the prompt is not valid UTF-8 text (it holds an undecodable byte or a lone surrogate); "
                    "pass UTF-8 text or token ids") from None
            ids = list(self.tokenizer.encode(prompt, add_special_tokens=True))
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.manifest.vocab_size]
            if bad:
                raise InvalidRequestError(
                    f"token ids {bad[:5]} are outside the vocabulary [0, {self.manifest.vocab_size})"
                )
        if not ids:
            raise InvalidRequestError("the prompt is empty; give at least one token")
        return ids

    def _new_seq_out(self, req: _Request, index: int, guide: Guide | None = None) -> _SeqOut:
        """Completion ``index``'s sampling and text state; ``guide``: a forked grammar state
        (n > 1)."""
        detok = (IncrementalDetokenizer(self.tokenizer, req.prompt_ids, req.params.skip_special_tokens)
                 if self.tokenizer is not None else None)
        stop = StopChecker(req.params, self.eos_token_ids, num_prompt_tokens=len(req.prompt_ids),
                           max_model_len=self.scheduler.config.max_model_len)
        if guide is None and req.params.guided is not None:
            guide = self.grammars.guide(req.params.guided)
        return _SeqOut(index, make_generator(req.params.seed, index), stop, detok, guide)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Abort a request in any state, freeing its KV blocks. Unknown ids return None."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return None
        self.scheduler.abort_request(request_id)
        self.tiers.forget(request_id)
        for seq in req.seqs.values():
            if seq.finish_reason is None:
                seq.finish_reason = "abort"
            self.metrics.finished_by_reason[seq.finish_reason] += 1
        # Unit: completions (choices), as when a request finishes: forks not made yet count too.
        self.metrics.finished_by_reason["abort"] += max(0, req.params.n - len(req.seqs))
        return self._output(req, finished=True)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    # -- one step -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the requests that produced tokens or finished."""
        # Store lookups that came back are staged before scheduling; with nothing running and
        # every waiting request still waiting for one, wait for it instead of spinning.
        idle = self.scheduler.num_running == 0 and self.scheduler.num_waiting <= len(self.tiers.pending)
        self.tiers.collect(wait_s=0.5 if idle else 0.0)
        plan = self.scheduler.schedule()
        self.tiers.stage()
        start = time.monotonic()
        logits = self.backend.execute(plan)
        sampled, results = self._sample(plan, logits)
        updates = self.scheduler.update(plan, sampled)
        self.tiers.publish()
        now = time.monotonic()
        self._record_step(plan, now - start, now)
        return self._process(updates, results, now)

    def _sample(self, plan: StepPlan, logits: np.ndarray) -> tuple[dict[int, list[int]], dict[int, Any]]:
        rows: list[SampleRow] = []
        seq_ids: list[int] = []
        for s in plan.seqs:
            if not s.sample:
                continue
            req = self._requests[s.request_id]
            seq = req.seqs[s.seq_id]
            gens = [seq.generator]
            if len(req.seqs) < req.params.n and not seq.output_ids:  # n > 1: the forks' first draws
                # Each fork starts from the parent's grammar state before the parent's token.
                req.forks = [self._new_seq_out(req, i, seq.guide.fork() if seq.guide else None)
                             for i in range(1, req.params.n)]
                gens += [f.generator for f in req.forks]
            rows.append(SampleRow(req.params, req.prompt_ids, seq.output_ids, gens, seq.guide))
            seq_ids.append(s.seq_id)
        results = self.sampler.sample(logits, rows) if rows else []
        sampled = {sid: list(r.token_ids) for sid, r in zip(seq_ids, results, strict=True)}
        return sampled, dict(zip(seq_ids, results, strict=True))

    def _process(self, updates: list[SeqUpdate], results: dict[int, Any], now: float) -> list[RequestOutput]:
        touched: dict[str, _Request] = {}
        for u in updates:
            req = touched[u.request_id] = self._requests[u.request_id]
            if u.parent_seq_id is None:
                seq = req.seqs[u.seq_id]
                lps = results[u.seq_id].logprobs
            else:
                seq = req.seqs[u.seq_id] = req.forks[u.sample_index - 1]
                lps = results[u.parent_seq_id].logprobs
            self._append(req, u, seq, lps[u.sample_index] if lps else None, now)
        outputs = []
        for req in touched.values():
            req.forks = []
            finished = req.finished
            outputs.append(self._output(req, finished))
            if finished:
                self._finish_request(req, now)
        return outputs

    def _append(self, req: _Request, u: SeqUpdate, seq: _SeqOut, lp: Any, now: float) -> None:
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
        update = seq.stop.update(token, delta)
        seq.new_text += update.text_delta
        self.metrics.counters["generation_tokens"] += 1
        reason, stop_reason = update.finish_reason, update.stop_reason
        if reason is None and seq.guide is not None and seq.guide.is_done:
            reason = "stop"  # the grammar is complete: nothing but EOS may follow
            seq.new_text += seq.stop.complete()
        if reason is not None:
            if seq.detok is not None and (reason == "length" or update.finish_reason is None):
                seq.tail = seq.detok.flush()
                seq.new_text += seq.tail
            seq.finish_reason, seq.stop_reason = reason, stop_reason
            self.scheduler.finish(u.seq_id)

    def _output(self, req: _Request, finished: bool) -> RequestOutput:
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

    def _finish_request(self, req: _Request, now: float) -> None:
        self._requests.pop(req.request_id, None)
        self.metrics.observe("e2e_request_latency_seconds", now - req.arrival)
        n_out = max(len(s.output_ids) for s in req.seqs.values())
        if req.first_token_time is not None and n_out > 1:
            self.metrics.observe("time_per_output_token_seconds", (now - req.first_token_time) / (n_out - 1))
        for seq in req.seqs.values():
            self.metrics.finished_by_reason[seq.finish_reason or "abort"] += 1
        self.metrics.counters["requests_finished"] += 1

    def _record_step(self, plan: StepPlan, seconds: float, now: float) -> None:
        if not plan.seqs:
            return
        prefill_tokens = sum(s.num_tokens for s in plan.seqs if s.num_tokens > 1 or not s.sample)
        self.metrics.counters["prompt_tokens_computed"] += prefill_tokens
        self.metrics.counters["steps"] += 1
        self.metrics.observe("prefill_step_seconds" if prefill_tokens else "decode_step_seconds", seconds)
        for s in plan.seqs:
            req = self._requests.get(s.request_id)
            if req is not None and req.first_scheduled_time is None:
                req.first_scheduled_time = now - seconds
                self.metrics.observe("queue_time_seconds", req.first_scheduled_time - req.arrival)

    def stats(self) -> dict[str, Any]:
        """Every metric as plain data (engine counters, histograms, scheduler, KV and store
        stats)."""
        snap = self.metrics.snapshot(self.scheduler.stats())
        running = self.scheduler.num_running_requests()
        snap["requests"] = {"running": running, "waiting": len(self._requests) - running}
        if self.tiers.store is not None:
            snap["kv_store"] = self.tiers.stats()
        return snap

    def close(self) -> None:
        """Publish what the store tier has queued (briefly) and stop its thread."""
        self.tiers.close()


def load_tokenizer(model_dir: Path) -> Any:
    """The HF fast tokenizer saved beside the model, or None when there is none."""
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))

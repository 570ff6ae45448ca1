"""The engine: one `step()` = schedule, run the backend, sample, update, report.

Wires the `InputProcessor` (validates and encodes a request once), the scheduler (batching,
the token-id stop rule and, through the KV manager, the blocks), a backend, the sampler and
the `OutputProcessor` (per-request sampling and text state, outputs, request metrics), and
the KV tiers (host offload, shared store) through `TierTransfer`. Per step the engine and
the scheduler trade two calls: `Scheduler.schedule` and `Scheduler.update` (plus
`Scheduler.finish` for a sequence stopped on its text).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trtkv.errors import ConfigError, InvalidRequestError, RequestRejectedError
from trtkv.runtime.backends import BaseBackend, create_backend
from trtkv.runtime.beam_search import BeamSearch
from trtkv.runtime.config import EngineConfig, resolve_config
from trtkv.runtime.input_processor import InputProcessor
from trtkv.runtime.kv.manager import KVCacheManager
from trtkv.runtime.metrics import EngineMetrics, speculative_stats
from trtkv.runtime.output_processor import OutputProcessor, RequestState
from trtkv.runtime.outputs import RequestOutput
from trtkv.runtime.plan import NO_STOP_IDS, StepPlan
from trtkv.runtime.sampling import (
    GrammarCompiler,
    Sampler,
    SampleResult,
    SamplingDefaults,
    SamplingParams,
)
from trtkv.runtime.scheduler.scheduler import Scheduler
from trtkv.runtime.spec import Draft, DraftSlot, create_proposer
from trtkv.runtime.tiers.transfer import TierTransfer, create_disk_store, create_store


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
        self.resolved = resolved = resolve_config(self.model_dir, config)
        self.manifest = resolved.manifest
        cache = resolved.cache
        if backend is None:
            backend = create_backend(str(self.model_dir), resolved.backend, resolved.manifest)
        else:  # a backend built by the caller has the host blocks it has: the swap tier's first
            swap = min(cache.num_swap_blocks, backend.num_host_blocks)
            offload = backend.num_host_blocks - swap if cache.enable_prefix_caching else 0
            cache = replace(cache, num_swap_blocks=swap, num_offload_blocks=offload)
        self.backend = backend
        store = disk = None
        if cache.num_offload_blocks:
            store = create_store(self.model_dir, resolved.store, backend)
            disk = create_disk_store(self.model_dir, resolved.store, backend)
        self.kv = KVCacheManager(
            backend.num_blocks, backend.block_size, num_host_blocks=cache.num_swap_blocks,
            enable_prefix_caching=cache.enable_prefix_caching,
            num_offload_blocks=cache.num_offload_blocks, remote=store if store is not None else disk, eviction=cache.eviction,
            prefix_ttl_s=cache.prefix_ttl_s,
        )
        self.tiers = TierTransfer(self.kv, backend, store, disk)
        self.scheduler = Scheduler(resolved.scheduler, self.kv, awaiting_store=self.tiers.pending)
        self.eos_token_ids = self.manifest.eos_token_ids
        self.sampler = Sampler(self.eos_token_ids)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.grammars = GrammarCompiler(self.tokenizer, self.manifest.vocab_size, self.eos_token_ids)
        self.metrics = EngineMetrics()
        self.sampling_defaults = SamplingDefaults.for_model(self.model_dir)
        """What a request leaves out: the model's generation_config.json over the built-in
        values; the CLI, the OpenAI server and Triton all take theirs from here."""
        self.inputs = InputProcessor(self.tokenizer, self.manifest.vocab_size, self.eos_token_ids,
                                     max_new_tokens_cap=config.max_new_tokens_cap, model_dir=self.model_dir,
                                     defaults=self.sampling_defaults)
        self.outputs = OutputProcessor(self.tokenizer, self.eos_token_ids, self.grammars, self.metrics)
        self.beams = BeamSearch(self.scheduler, self.tokenizer, self.eos_token_ids, self.metrics)
        """The beam-search requests (``SamplingParams.use_beam_search``)."""
        self.speculative = resolved.speculative
        self.proposer = create_proposer(
            resolved.speculative, target_model_dir=self.model_dir, target=self.manifest, backend=resolved.backend,
            num_blocks=backend.num_blocks, block_size=backend.block_size, eos_token_ids=self.eos_token_ids)
        """Proposes draft tokens each step (speculative decoding); None when it is off."""
        limits = resolved.scheduler
        rows = min(limits.max_num_batched_tokens, limits.max_num_seqs * (1 + self.speculative.num_tokens))
        if self.proposer is not None and backend.max_logits_rows is not None and backend.max_logits_rows < rows:
            self.proposer.close()
            raise ConfigError(f"this engine returns at most {backend.max_logits_rows} logits rows per step, and "
                              f"speculative decoding may need {rows}: rebuild it with this trtkv (`trtkv build`), "
                              "or lower --max-num-batched-tokens / --num-speculative-tokens")
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
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        inp = self.inputs.process(prompt, params)
        now = time.monotonic()
        beam = inp.params.use_beam_search
        if beam and inp.params.n * 2 > self.manifest.vocab_size:
            raise InvalidRequestError(f"beam search with n={inp.params.n} beams needs a vocabulary of at least "
                                      f"{2 * inp.params.n} tokens; lower n")
        try:
            # The scheduler is the one admission check (id, empty prompt, length, capacity,
            # n, queue), so the engine's and the scheduler's rejection counts always agree.
            seq_id = self.scheduler.add_request(
                request_id, inp.prompt_ids, inp.params.max_new_tokens, priority=priority,
                arrival_time=now, cache_salt=cache_salt, n=inp.params.n, stop=NO_STOP_IDS if beam else inp.stop,
            )
        except RequestRejectedError as exc:
            self.metrics.rejected_by_reason[exc.reason] += 1
            raise
        try:
            if beam:
                self.beams.add(request_id, inp.prompt_ids, inp.params, seq_id, now)
            else:
                self.outputs.add(RequestState(request_id, inp.prompt_ids, inp.params, now, inp.is_capped), seq_id)
        except BaseException:
            self.scheduler.abort_request(request_id)  # nothing is kept
            raise
        self.tiers.prefetch(request_id, inp.prompt_ids, cache_salt)
        self.metrics.counters["requests_added"] += 1
        return request_id

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """The token ids of a prompt (text through the model's tokenizer)."""
        return self.inputs.encode(prompt)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Abort a request in any state, freeing its KV blocks. Unknown ids return None."""
        out = self.outputs.abort(request_id) or self.beams.abort(request_id)
        if out is not None:
            self.scheduler.abort_request(request_id)
            self.tiers.forget(request_id)
        return out

    def has_unfinished(self) -> bool:
        return bool(self.outputs.requests) or bool(self.beams.requests)

    @property
    def num_requests(self) -> int:
        return len(self.outputs.requests) + len(self.beams.requests)

    # -- one step -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the requests that produced tokens or finished."""
        # Store lookups that came back are staged before scheduling; with nothing running and
        # every waiting request still waiting for one, wait for it instead of spinning.
        idle = self.scheduler.num_running == 0 and self.scheduler.num_waiting <= len(self.tiers.pending)
        self.tiers.collect(wait_s=0.5 if idle else 0.0)
        drafts = self._propose() if self.proposer is not None else {}
        plan = self.scheduler.schedule({i: d.token_ids for i, d in drafts.items()})
        self.tiers.stage()
        start = time.monotonic()
        logits = self.backend.execute(plan)
        sampled, results, beam_rows = self._sample(plan, logits, drafts)
        updates = self.scheduler.update(plan, sampled)
        if self.proposer is not None and not self.scheduler.has_unfinished():
            self.proposer.close()  # the draft model's blocks of what just finished
        self.tiers.publish()
        now = time.monotonic()
        self._record_step(plan, now - start, now)
        finished_beams = self.beams.step(beam_rows, now) if beam_rows else []
        return self.outputs.process(updates, results, now, self.scheduler.finish) + finished_beams

    def _propose(self) -> dict[int, Draft]:
        """Draft tokens for the sequences that decode next step (not for grammar-guided
        requests: a draft token the grammar forbids would only be rejected)."""
        assert self.proposer is not None
        k = self.speculative.num_tokens
        slots = []
        for seq_id, request_id, token_ids, room in self.scheduler.decoding_seqs():
            req = self.outputs.requests.get(request_id)
            if req is None or room <= 0:  # a beam of beam search, or no token to spare
                continue
            seq = req.seqs.get(seq_id)
            if seq is not None and seq.guide is None:
                slots.append(DraftSlot(seq_id, token_ids, min(k, room), req.params, seq.generator))
        return self.proposer.propose(slots)

    def _sample(self, plan: StepPlan, logits: np.ndarray, drafts: dict[int, Draft]
                ) -> tuple[dict[int, list[int]], dict[int, SampleResult], dict[int, np.ndarray]]:
        """Tokens of the sampling sequences; beams' rows go to beam search instead (their
        sequences are held: no tokens until it decides)."""
        beam_rows: dict[int, np.ndarray] = {}
        if self.beams.requests:
            keep: list[int] = []
            i = 0
            for s in plan.seqs:
                if s.sample:
                    if self.beams.owns(s.seq_id):
                        beam_rows[s.seq_id] = logits[i]
                    else:
                        keep.extend(range(i, i + 1 + s.num_draft))
                    i += 1 + s.num_draft
            if beam_rows:
                logits = logits[keep]
        rows, seq_ids = self.outputs.sample_rows(plan, drafts, skip=beam_rows)
        results = self.sampler.sample(logits, rows) if rows else []
        sampled: dict[int, list[int]] = {sid: list(r.token_ids) for sid, r in zip(seq_ids, results, strict=True)}
        sampled.update({sid: [] for sid in beam_rows})
        if drafts:
            c = self.metrics.counters
            for row, result in zip(rows, results, strict=True):
                if row.draft:
                    c["spec_decode_num_drafts"] += 1
                    c["spec_decode_num_draft_tokens"] += len(row.draft)
                    c["spec_decode_num_accepted_tokens"] += len(result.token_ids) - 1
        return sampled, dict(zip(seq_ids, results, strict=True)), beam_rows

    def _record_step(self, plan: StepPlan, seconds: float, now: float) -> None:
        if not plan.seqs:
            return
        prefill_tokens = sum(s.num_tokens for s in plan.seqs if (s.num_tokens > 1 and not s.num_draft) or not s.sample)
        self.metrics.counters["prompt_tokens_computed"] += prefill_tokens
        self.metrics.counters["steps"] += 1
        self.metrics.observe("prefill_step_seconds" if prefill_tokens else "decode_step_seconds", seconds)
        self.outputs.mark_scheduled(plan, now - seconds)

    def stats(self) -> dict[str, Any]:
        """Every metric as plain data (engine counters, histograms, scheduler, KV and store
        stats)."""
        snap = self.metrics.snapshot(self.scheduler.stats())
        running = self.scheduler.num_running_requests()
        snap["requests"] = {"running": running, "waiting": self.num_requests - running}
        if self.tiers.store is not None or self.tiers.disk is not None:
            snap["kv_store"] = self.tiers.stats()
        spec = speculative_stats(self.metrics.counters)
        if spec is not None:
            snap["speculative"] = spec
        return snap

    def histogram_buckets(self) -> dict[str, list[tuple[float, int]]]:
        """Cumulative buckets of every latency histogram (Prometheus ``le`` pairs)."""
        return {name: h.cumulative() for name, h in self.metrics.histograms.items()}

    @property
    def block_size(self) -> int:
        """Tokens per KV block of the pool."""
        return self.kv.block_size

    def close(self) -> None:
        """Publish what the store tier has queued (briefly) and stop its thread; release the
        draft model's blocks."""
        self.tiers.close()
        if self.proposer is not None:
            self.proposer.close()


def load_tokenizer(model_dir: Path) -> Any:
    """The HF fast tokenizer saved beside the model, or None when there is none."""
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))

"""What the engine returns to callers: plain data, one object per request per step."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CompletionOutput:
    """One of a request's n sequences.

    Attributes:
        index: 0 .. n-1.
        token_ids: all output tokens so far (cumulative).
        text: all output text so far (cumulative; stop strings excluded).
        new_token_ids / new_text: what this step added (for streaming).
        finish_reason: None while running, else "stop", "length" or "abort".
        stop_reason: the stop token id or stop string, when finish_reason == "stop".
        logprobs: per output token (token_id, logprob, [(top_id, top_logprob), ...]).
        capped: finish_reason is "length" because the server's max_new_tokens_cap cut the
            request's max_new_tokens (it would otherwise have gone on).
    """

    index: int
    token_ids: tuple[int, ...]
    text: str
    new_token_ids: tuple[int, ...] = ()
    new_text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: tuple[tuple[int, float, tuple[tuple[int, float], ...]], ...] | None = None
    capped: bool = False


@dataclass(frozen=True)
class RequestOutput:
    """A request's state after a step.

    Attributes:
        request_id: the caller's id.
        prompt_ids: the prompt's token ids.
        outputs: one per sequence (n of them once the prompt is done).
        finished: every sequence has finished.
        num_cached_tokens: prompt tokens served from the prefix cache.
        metrics: per-request timings in seconds (arrival, first_token, finished, ttft, ...).
    """

    request_id: str
    prompt_ids: tuple[int, ...]
    outputs: tuple[CompletionOutput, ...]
    finished: bool
    num_cached_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

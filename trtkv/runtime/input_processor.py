"""`InputProcessor`: each request validated and encoded once, before anything is queued.

Owns: prompt text -> token ids (the model's tokenizer), the vocabulary-range and UTF-8
checks, the server-wide ``max_new_tokens`` cap and the request's token-id `StopRule`. What
depends on the scheduler's limits (length, KV capacity, queue) is the scheduler's one
admission check; the request id and the empty prompt are checked there too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtkv.errors import InvalidRequestError
from trtkv.runtime.plan import StopRule
from trtkv.runtime.sampling import SamplingDefaults, SamplingParams


@dataclass(frozen=True)
class ProcessedRequest:
    """A request ready for the scheduler.

    Attributes:
        prompt_ids: the prompt's token ids.
        params: the sampling parameters, ``max_new_tokens`` lowered to the cap.
        is_capped: the cap lowered ``max_new_tokens``.
        stop: its token-id stop rule (the scheduler applies it).
    """

    prompt_ids: list[int]
    params: SamplingParams
    is_capped: bool
    stop: StopRule


class InputProcessor:
    """Validates and encodes requests for one model.

    Args:
        tokenizer: the model's HF tokenizer, or None (token ids only).
        vocab_size: ids must lie in [0, vocab_size).
        eos_token_ids: the model's end-of-sequence ids (stop unless ``ignore_eos``).
        max_new_tokens_cap: lower every request's ``max_new_tokens`` to this; 0 = no cap.
        model_dir: named in the error when text comes without a tokenizer.
        defaults: the sampling parameters of a request given none.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int], *,
                 max_new_tokens_cap: int = 0, model_dir: str | Path = "the model",
                 defaults: SamplingDefaults | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = tuple(eos_token_ids)
        self.max_new_tokens_cap = max_new_tokens_cap
        self.model_dir = model_dir
        self.defaults = defaults or SamplingDefaults()

    def process(self, prompt: str | Sequence[int], params: SamplingParams | None) -> ProcessedRequest:
        """Raises:
            InvalidRequestError: token ids out of range, text without a tokenizer, text
                that is not UTF-8.
        """
        params = params or self.defaults.params()
        capped = params.with_max_new_tokens_cap(self.max_new_tokens_cap)
        stop = StopRule.of(capped.stop_token_ids, self.eos_token_ids, ignore_eos=capped.ignore_eos,
                           min_tokens=capped.min_tokens)
        return ProcessedRequest(self.encode(prompt), capped, capped is not params, stop)

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a text or id prompt (an empty prompt gives [])."""
        if not isinstance(prompt, str):
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise InvalidRequestError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
            return ids
        if self.tokenizer is None:
            raise InvalidRequestError(f"{self.model_dir} has no tokenizer files; pass token ids instead of text")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(
                "the prompt is not valid UTF-8 text (it holds an undecodable byte or a lone surrogate); "
                "pass UTF-8 text or token ids") from None
        return list(self.tokenizer.encode(prompt, add_special_tokens=True))

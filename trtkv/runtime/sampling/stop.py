"""`StopChecker`: the text side of stopping: which part of a sequence's text is safe to
stream, stop strings, and the finish reason to report.

The token-id rule (`trtkv.runtime.plan.StopRule`: EOS, stop ids, min_tokens, max_new_tokens)
is applied once, by the scheduler; the engine hands its decision to `StopChecker.update`.
Used alone (no decision given) the checker applies the same `StopRule` itself.

Finish reasons: ``"stop"`` (EOS unless ``ignore_eos``, a stop token id, or a stop string) and
``"length"`` (``max_new_tokens`` reached, or the sequence filled ``max_model_len``). The text
of the token that stops the sequence (EOS / stop token id) is not emitted, and neither is a
stop string nor anything after it. Text that could be the start of a stop string is held
back until the next tokens resolve it. EOS, stop token ids and stop strings only end a
sequence once ``min_tokens`` tokens precede the stopping token.

Must not import torch, onnxruntime or tensorrt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trtkv.errors import RequestRejectedError
from trtkv.runtime.plan import FinishReason, StopRule, TokenFinish
from trtkv.runtime.sampling.params import SamplingParams


class _Decide:
    """`StopChecker.update`'s default: apply the `StopRule` here (no scheduler decided)."""


DECIDE = _Decide()


@dataclass(frozen=True)
class StopUpdate:
    """Outcome of adding one token.

    Attributes:
        text_delta: text that is now safe to stream (possibly "").
        finish_reason: None while the sequence goes on.
        stop_reason: the token id or stop string that ended it, for ``"stop"``; else None.
    """

    text_delta: str
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


class StopChecker:
    """Stop state of one sequence; feed it every generated token with its text delta.

    Args:
        params: the request's sampling parameters.
        eos_token_ids: the model's end-of-sequence ids.
        num_prompt_tokens: prompt length, for the ``max_model_len`` bound.
        max_model_len: most tokens (prompt + output) a sequence may hold; None for no bound.

    Raises:
        RequestRejectedError: ``reason="too_long"`` when the prompt already fills
            ``max_model_len``.
    """

    def __init__(self, params: SamplingParams, eos_token_ids: Sequence[int] = (), *,
                 num_prompt_tokens: int = 0, max_model_len: int | None = None) -> None:
        if max_model_len is not None and num_prompt_tokens >= max_model_len:
            raise RequestRejectedError(
                "too_long",
                f"the prompt has {num_prompt_tokens} tokens but max_model_len is "
                f"{max_model_len}: shorten the prompt to leave room for output tokens",
            )
        self.params = params
        self.rule = StopRule.of(params.stop_token_ids, eos_token_ids, ignore_eos=params.ignore_eos,
                                min_tokens=params.min_tokens)
        self._max_stop_len = max((len(s) for s in params.stop), default=0)
        self._num_prompt_tokens = num_prompt_tokens
        self._max_model_len = max_model_len
        self._emitted: list[str] = []  # streamed text, in chunks (joined on demand)
        self._pending = ""  # unstreamed text: at most a possible stop-string start
        self.num_output_tokens = 0
        self.finish_reason: FinishReason | None = None

    @property
    def text(self) -> str:
        """The output text streamed so far (the final text once finished)."""
        return "".join(self._emitted)

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    def update(self, token_id: int, text_delta: str,
               token_finish: TokenFinish | None | _Decide = DECIDE) -> StopUpdate:
        """Add one generated token and decide whether the sequence stops.

        Args:
            token_id: the new token.
            text_delta: its text from the `IncrementalDetokenizer` (may be "").
            token_finish: the scheduler's `StopRule` decision for this token (None: it goes
                on); by default the checker applies the rule itself.

        Returns:
            The text to stream now and, if the sequence is finished, why. A stop string in
            the token's text wins over a ``"length"`` decision for the same token.
        """
        assert self.finish_reason is None, "update() called on a finished sequence"
        self.num_output_tokens += 1
        if isinstance(token_finish, _Decide):
            token_finish = self.rule.check(token_id, self.num_output_tokens, self.params.max_new_tokens)
        if token_finish is not None and token_finish[0] == "stop":
            return self._finish("stop", token_finish[1], len(self._pending))
        old_len = len(self._pending)
        self._pending += text_delta
        if self.params.stop and self.num_output_tokens > self.params.min_tokens:
            found = self._find_stop_string(old_len)
            if found is not None:
                return self._finish("stop", found[1], found[0])
        if token_finish is not None or self._is_length_reached():
            return self._finish("length", None, len(self._pending))
        end = len(self._pending) - self._held_back_len()
        return StopUpdate(self._emit(end))

    def complete(self) -> str:
        """Finish with ``stop`` now (a structured-output grammar is complete); returns the
        held-back text, released."""
        assert self.finish_reason is None, "complete() called on a finished sequence"
        return self._finish("stop", None, len(self._pending)).text_delta

    def _emit(self, end: int) -> str:
        delta, self._pending = self._pending[:end], self._pending[end:]
        if delta:
            self._emitted.append(delta)
        return delta

    def _is_length_reached(self) -> bool:
        """Only bound left after the rule: ``max_model_len`` (when the checker is given one)."""
        total = self._num_prompt_tokens + self.num_output_tokens
        return self._max_model_len is not None and total >= self._max_model_len

    def _finish(self, reason: FinishReason, stop_reason: int | str | None,
                text_end: int) -> StopUpdate:
        self.finish_reason = reason
        delta = self._emit(text_end)
        self._pending = ""
        return StopUpdate(delta, reason, stop_reason)

    def _find_stop_string(self, old_len: int) -> tuple[int, str] | None:
        """Earliest stop string that ends in the new text: (index in pending, stop string)."""
        # Matches never start in streamed text (held back), and those ending before old_len
        # were looked for already.
        start = max(old_len - self._max_stop_len + 1, 0)
        best: tuple[int, str] | None = None
        for stop in self.params.stop:
            index = self._pending.find(stop, start)
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop)
        return best

    def _held_back_len(self) -> int:
        """Length of the longest pending suffix that is a proper prefix of a stop string."""
        for length in range(min(self._max_stop_len - 1, len(self._pending)), 0, -1):
            suffix = self._pending[-length:]
            if any(s.startswith(suffix) for s in self.params.stop):
                return length
        return 0

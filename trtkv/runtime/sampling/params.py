"""`SamplingParams`: the per-request knobs of token selection, validated on construction.

Owns only the parameter record and its validation. Must not import torch, onnxruntime or
tensorrt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from trtkv.errors import InvalidRequestError
from trtkv.runtime.sampling.guided import GuidedDecoding
from trtkv.runtime.sampling_defaults import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE

MAX_LOGPROBS = 20
#: Caps on stop conditions: each stop string is searched in every new piece of text, so an
#: unbounded list lets one request slow every other (a denial of service).
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024
"""Largest ``logprobs`` a request may ask for."""

GREEDY_TEMPERATURE = 1e-5
"""Temperatures below this sample greedily (as vLLM does)."""

MAX_SEED = 2**64 - 1
"""Largest accepted ``seed`` (seeds are fed to ``numpy.random.SeedSequence``)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next tokens of one request; invalid values raise on construction.

    Lists given for ``stop`` and ``stop_token_ids`` are converted to tuples.

    Raises:
        InvalidRequestError: a field is out of range; the message names the field, the value
            and the allowed range.
    """

    n: int = 1
    """Number of independent completions of the prompt (>= 1)."""
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    """Most tokens generated per completion (>= 1)."""
    temperature: float = DEFAULT_TEMPERATURE
    """Softmax temperature; 0 (or below 1e-5) means greedy (argmax)."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 turns the filter off."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest top set whose probability reaches top_p, in (0, 1]."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the top probability, in [0, 1]."""
    repetition_penalty: float = 1.0
    """CTRL/HF penalty over prompt+output tokens: positive logits divided, negative multiplied."""
    presence_penalty: float = 0.0
    """OpenAI penalty subtracted once from every token present in the output, in [-2, 2]."""
    frequency_penalty: float = 0.0
    """OpenAI penalty subtracted per occurrence of a token in the output, in [-2, 2]."""
    seed: int | None = None
    """Seed of the request's random generators; None draws fresh entropy."""
    logprobs: int | None = None
    """Return the sampled token's logprob and the top-N logprobs (0..20); None for none."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; they are not included in the output text."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end generation (in addition to EOS)."""
    ignore_eos: bool = False
    """Keep generating after EOS."""
    min_tokens: int = 0
    """Tokens generated before EOS, stop token ids or stop strings may end the output."""
    skip_special_tokens: bool = True
    """Leave special tokens out of the detokenized text."""
    guided: GuidedDecoding | None = None
    """Structured output: the text must follow this JSON schema / regex / choice / grammar."""
    use_beam_search: bool = False
    """Beam search with ``n`` beams (Hugging Face's ``num_beams``, ``do_sample=False``): the
    ``n`` best finished hypotheses are returned, best first. Deterministic: temperature and
    seed are not used; sampling filters, penalties, logprobs, stop strings, min_tokens and
    structured output are refused."""
    length_penalty: float = 1.0
    """Beam search: a finished hypothesis scores sum(logprobs) / generated_length ** length_penalty."""
    early_stopping: bool | str = False
    """Beam search: True stops once ``n`` hypotheses are finished; False stops when no running
    beam can still beat the worst finished one at its current length (the heuristic of
    Hugging Face); "never" at the longest length a positive length_penalty could reach."""

    def __post_init__(self) -> None:
        for name in ("stop", "stop_token_ids"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    @property
    def is_greedy(self) -> bool:
        """Whether tokens are chosen by argmax: temperature 0, or below `GREEDY_TEMPERATURE`
        (the limit of sampling as the temperature falls; dividing by it would overflow)."""
        return self.temperature < GREEDY_TEMPERATURE

    def validate(self) -> None:
        """Check every field.

        Raises:
            InvalidRequestError: a field has a wrong type or is out of range.
        """
        _check_int("n", self.n, low=1)
        _check_int("max_new_tokens", self.max_new_tokens, low=1)
        _check_float("temperature", self.temperature, "[0, inf); use 0 for greedy", 0.0)
        _check_int("top_k", self.top_k, low=0, hint="; use 0 to turn top_k off")
        _check_float("top_p", self.top_p, "(0, 1]; use 1 to turn top_p off", 0.0, 1.0,
                     low_open=True)
        _check_float("min_p", self.min_p, "[0, 1]; use 0 to turn min_p off", 0.0, 1.0)
        _check_float("repetition_penalty", self.repetition_penalty,
                     "(0, inf); use 1 for no penalty", 0.0, low_open=True)
        for name in ("presence_penalty", "frequency_penalty"):
            _check_float(name, getattr(self, name), "[-2, 2]", -2.0, 2.0)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=MAX_SEED, hint="; or None for no seed")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0, high=MAX_LOGPROBS,
                       hint="; or None for no logprobs")
        _check_int("min_tokens", self.min_tokens, low=0, high=self.max_new_tokens,
                   hint=" (min_tokens may not exceed max_new_tokens)")
        if not isinstance(self.stop, tuple) or not all(
            isinstance(s, str) and s for s in self.stop
        ):
            raise InvalidRequestError(
                f"stop={self.stop!r} is invalid: give a tuple or list of non-empty strings"
            )
        if len(self.stop) > MAX_STOP_STRINGS or any(len(x) > MAX_STOP_STRING_CHARS for x in self.stop):
            raise InvalidRequestError(
                f"stop has {len(self.stop)} strings (longest {max(map(len, self.stop))} chars); at most "
                f"{MAX_STOP_STRINGS} strings of at most {MAX_STOP_STRING_CHARS} chars are allowed"
            )
        if not isinstance(self.stop_token_ids, tuple):
            raise InvalidRequestError(
                f"stop_token_ids={self.stop_token_ids!r} is invalid: give a tuple or list of "
                "token ids (ints >= 0)"
            )
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise InvalidRequestError(
                f"stop_token_ids has {len(self.stop_token_ids)} entries; at most {MAX_STOP_TOKEN_IDS} are allowed"
            )
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids", token_id, low=0,
                       hint=" for every entry (token ids are ints >= 0)")
        if self.guided is not None and not isinstance(self.guided, GuidedDecoding):
            raise InvalidRequestError(f"guided={self.guided!r:.60} is invalid: give a GuidedDecoding")
        if self.use_beam_search or self.length_penalty != 1.0 or self.early_stopping is not False:
            self._validate_beam_search()
        for name in ("ignore_eos", "skip_special_tokens", "use_beam_search"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidRequestError(
                    f"{name}={getattr(self, name)!r} is invalid: give True or False"
                )

    def _validate_beam_search(self) -> None:
        if not self.use_beam_search:
            raise InvalidRequestError("length_penalty and early_stopping apply to beam search: add use_beam_search=True "
                                      "(--use-beam-search)")
        _check_float("length_penalty", self.length_penalty, "(-inf, inf)", -math.inf)
        if self.early_stopping not in (True, False, "never"):
            raise InvalidRequestError(f"early_stopping={self.early_stopping!r} is invalid: give true, false or \"never\"")
        unsupported = {
            "top_k": self.top_k != 0, "top_p": self.top_p != 1.0, "min_p": self.min_p != 0.0,
            "repetition_penalty": self.repetition_penalty != 1.0, "presence_penalty": self.presence_penalty != 0.0,
            "frequency_penalty": self.frequency_penalty != 0.0, "logprobs": self.logprobs is not None,
            "stop": bool(self.stop), "min_tokens": self.min_tokens != 0, "guided": self.guided is not None,
        }
        given = [name for name, on in unsupported.items() if on]
        if given:
            raise InvalidRequestError(f"beam search does not support {', '.join(given)}: drop "
                                      f"{'it' if len(given) == 1 else 'them'} or use_beam_search")

    def with_max_new_tokens_cap(self, cap: int) -> SamplingParams:
        """These params with max_new_tokens (and min_tokens) lowered to ``cap``; 0 = no cap.

        Returns ``self`` when the cap does not cut the request.
        """
        if not cap or self.max_new_tokens <= cap:
            return self
        return replace(self, max_new_tokens=cap, min_tokens=min(self.min_tokens, cap))

    def as_dict(self) -> dict[str, object]:
        """The fields as a plain dict (for logging and the serving layer)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_int(name: str, value: object, *, low: int, high: int | None = None,
               hint: str = "") -> None:
    allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            f"{name}={value!r} is invalid: it must be an integer {allowed}{hint}"
        )
    if value < low or (high is not None and value > high):
        raise InvalidRequestError(f"{name}={value!r} is out of range: allowed {allowed}{hint}")


def _check_float(name: str, value: object, allowed: str, low: float,
                 high: float | None = None, *, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"{name}={value!r} is invalid: it must be a number in {allowed}")
    v = float(value)
    too_low = v <= low if low_open else v < low
    too_high = high is not None and v > high
    if math.isnan(v) or math.isinf(v) or too_low or too_high:
        raise InvalidRequestError(f"{name}={value!r} is out of range: allowed {allowed}")

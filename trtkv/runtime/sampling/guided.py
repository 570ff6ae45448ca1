"""Structured output: a grammar (JSON schema, regex, choice, Lark/GBNF) as a logits mask.

`GuidedDecoding` is the request's constraint (frozen, part of `SamplingParams`). The
`GrammarCompiler` (one per engine) turns it into a `Guide`, one per sequence: before each
draw the guide masks every token the grammar does not allow next (``-inf``), after it the
guide consumes the drawn token; once the grammar is complete the sequence stops. Grammars
come from llguidance (``trtkv[guided]``), whose matcher computes the allowed-token bitmask.

numpy only (and llguidance when a request asks for a grammar).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from trtkv.errors import InvalidRequestError

GUIDED_KINDS = ("json", "regex", "choice", "grammar")
MAX_GUIDED_SPEC_CHARS = 100_000
"""Longest grammar text a request may send (compiling is CPU work done for every request)."""
MAX_CHOICES = 1024

#: JSON as a server emits it: compact separators, no free whitespace (with free whitespace
#: a weak model can fill max_tokens with blanks inside a valid document).
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class GuidedDecoding:
    """A constraint on the output text.

    Attributes:
        kind: ``json`` (spec: a JSON schema as JSON text; ``{"type": "object"}`` for any
            object), ``regex`` (a Rust-regex the whole output matches), ``choice`` (a JSON
            list of strings; the output is one of them) or ``grammar`` (Lark, or llama.cpp
            GBNF).
        spec: the constraint's text, as above.
        origin: the request parameter it came from (named in errors), e.g. ``guided_regex``.
    """

    kind: str
    spec: str
    origin: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in GUIDED_KINDS:
            raise InvalidRequestError(f"guided decoding kind {self.kind!r} is not one of "
                                      f"{', '.join(GUIDED_KINDS)}", self.origin or None)
        if not isinstance(self.spec, str) or not self.spec:
            raise InvalidRequestError(f"the {self.kind} constraint is empty; give its text", self.origin or None)
        if len(self.spec) > MAX_GUIDED_SPEC_CHARS:
            raise InvalidRequestError(f"the {self.kind} constraint has {len(self.spec)} chars; at most "
                                      f"{MAX_GUIDED_SPEC_CHARS} are allowed", self.origin or None)

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str, origin: str = "") -> GuidedDecoding:
        return cls("json", schema if isinstance(schema, str) else json.dumps(schema), origin)

    @classmethod
    def json_object(cls, origin: str = "") -> GuidedDecoding:
        return cls("json", '{"type": "object"}', origin)

    @classmethod
    def regex(cls, pattern: str, origin: str = "") -> GuidedDecoding:
        return cls("regex", pattern, origin)

    @classmethod
    def choice(cls, options: list[str], origin: str = "") -> GuidedDecoding:
        if not options or len(options) > MAX_CHOICES or not all(isinstance(o, str) and o for o in options):
            raise InvalidRequestError(f"a choice needs 1 to {MAX_CHOICES} non-empty strings", origin or None)
        return cls("choice", json.dumps(options), origin)

    @classmethod
    def grammar(cls, text: str, origin: str = "") -> GuidedDecoding:
        return cls("grammar", text, origin)


class Guide:
    """One sequence's grammar state: masks logits, consumes drawn tokens."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._bits = np.empty((vocab_size + 31) // 32, dtype=np.int32)

    def apply(self, row: npt.NDArray[np.float64]) -> None:
        """Set the logit of every token the grammar forbids next to ``-inf``, in place."""
        self._matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        allowed = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: row.shape[0]]
        if not allowed.any():  # a matcher in an error state allows nothing: it is done (is_done)
            return
        row[allowed == 0] = -np.inf

    def consume(self, token_id: int) -> None:
        self._matcher.consume_token(token_id)

    @property
    def is_done(self) -> bool:
        """The grammar is complete: no token but EOS may follow."""
        return bool(self._matcher.is_stopped())

    def fork(self) -> Guide:
        """An independent copy (a forked completion continues from the same state)."""
        return Guide(self._matcher.deep_copy(), self._vocab_size)


class GrammarCompiler:
    """Compiles constraints against one tokenizer; compiled grammars are cached by spec.

    Args:
        tokenizer: the model's Hugging Face fast tokenizer (None: structured output refused).
        vocab_size: rows of the model's logits (may exceed the tokenizer's vocabulary).
        eos_token_ids: the model's EOS ids (the grammar allows them once complete).
    """

    CACHE_SIZE = 64

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: tuple[int, ...]) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos = list(eos_token_ids)
        self._lltok: Any = None
        self._grammars: OrderedDict[GuidedDecoding, str] = OrderedDict()

    def guide(self, constraint: GuidedDecoding) -> Guide:
        """A fresh `Guide` for one sequence.

        Raises:
            InvalidRequestError: the constraint does not compile (the message says why), the
                model has no fast tokenizer.
            MissingExtraError: llguidance is not installed.
        """
        from trtkv._optional import require

        llg = require("llguidance", "guided", "structured output (response_format, guided_*)")
        if self._lltok is None:
            if self._tokenizer is None or not getattr(self._tokenizer, "is_fast", False):
                raise InvalidRequestError("structured output needs the model's fast tokenizer "
                                          "(tokenizer.json beside the export)")
            import llguidance.hf

            self._lltok = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self._vocab_size,
                                                       eos_token=self._eos or None)
        grammar = self._grammars.get(constraint)
        if grammar is None:
            grammar = self._compile(llg, constraint)
            self._grammars[constraint] = grammar
            while len(self._grammars) > self.CACHE_SIZE:
                self._grammars.popitem(last=False)
        else:
            self._grammars.move_to_end(constraint)
        matcher = llg.LLMatcher(self._lltok, grammar, log_level=0)
        if matcher.is_error():
            self._grammars.pop(constraint, None)
            raise InvalidRequestError(f"the {constraint.kind} constraint does not compile: "
                                      f"{_first_line(matcher.get_error())}", constraint.origin or None)
        return Guide(matcher, self._vocab_size)

    @staticmethod
    def _compile(llg: Any, constraint: GuidedDecoding) -> str:
        kind, spec = constraint.kind, constraint.spec
        try:
            if kind == "json":
                schema = json.loads(spec)
                if not isinstance(schema, dict):
                    raise ValueError("a JSON schema is a JSON object")
                return str(llg.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS))
            if kind == "regex":
                return str(llg.LLMatcher.grammar_from_regex(spec))
            if kind == "choice":
                options = json.loads(spec)
                if not isinstance(options, list) or not all(isinstance(o, str) and o for o in options):
                    raise ValueError("a choice is a JSON list of non-empty strings")
            return str(llg.grammar_from("choice" if kind == "choice" else "grammar", spec))
        except (ValueError, TypeError, RecursionError) as exc:
            raise InvalidRequestError(f"the {kind} constraint is invalid: {_first_line(str(exc))}",
                                      constraint.origin or None) from None


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["unknown error"])[0][:300]

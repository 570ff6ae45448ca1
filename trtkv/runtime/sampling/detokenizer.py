"""`IncrementalDetokenizer`: token ids in, stable text deltas out, one token at a time.

Two ways, with the same text (a test checks them against each other on random ids):

- ``tokenizers.decoders.DecodeStream`` (Rust, about 5x faster) for a Hugging Face fast
  tokenizer whose prompt context decodes cleanly, i.e. every real text prompt;
- otherwise a short window of recent tokens decoded per step (two offsets into the token
  list, as in vLLM), so the cost per token does not grow with the output length.

Either way a delta never ends inside a character: a multi-byte UTF-8 character split over
several byte-level tokens is released whole.

Must not import torch, onnxruntime or tensorrt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

REPLACEMENT_CHAR = "\ufffd"

NUM_PROMPT_CONTEXT_TOKENS = 5
"""Prompt tokens decoded along with the output, so that decoders which treat the first token
specially (e.g. dropping a leading space) see the same context as a full decode would."""


class Tokenizer(Protocol):
    """The part of a Hugging Face ``PreTrainedTokenizerFast`` this module uses."""

    def decode(self, token_ids: Any, skip_special_tokens: bool = ..., **kwargs: Any) -> Any: ...


class IncrementalDetokenizer:
    """Detokenizes one sequence's output as it grows.

    The concatenated deltas of `push` plus `flush` equal
    ``tokenizer.decode(output_ids, skip_special_tokens=..., clean_up_tokenization_spaces=False)``
    for byte-level BPE tokenizers whenever the prompt ends on a character boundary. (Space
    clean-up is never applied: it is lossy and cannot be done incrementally.)

    Args:
        tokenizer: a Hugging Face fast tokenizer (anything with a compatible ``decode``).
        prompt_ids: the prompt's token ids; only the last few are used, as decode context.
        skip_special_tokens: leave special tokens out of the text.
        use_stream: allow ``DecodeStream`` (False: always the window; tests compare the two).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int],
                 skip_special_tokens: bool = True, *, use_stream: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._num_output_tokens = 0
        context = list(prompt_ids[-NUM_PROMPT_CONTEXT_TOKENS:])
        self._stream: Any = None
        self._pending: list[int] = []  # stream mode: tokens not yet released as text
        backend = getattr(tokenizer, "backend_tokenizer", None) if use_stream else None
        if backend is not None and REPLACEMENT_CHAR not in self._decode_ids(context, False):
            from tokenizers.decoders import DecodeStream

            self._backend = backend
            self._stream = DecodeStream(ids=context, skip_special_tokens=skip_special_tokens)
            return
        self._ids: list[int] = context
        # _ids[_prefix_offset:_read_offset] is context whose text was already emitted (or is
        # prompt); text decoded past _read_offset is new.
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        # A prompt that ends inside a character: treat its dangling tokens as unread, so the
        # completed character is emitted whole instead of losing its first bytes.
        while self._read_offset > 0 and self._decode(0, self._read_offset).endswith(
            REPLACEMENT_CHAR
        ):
            self._read_offset -= 1
        self._prefix_text = self._decode(self._prefix_offset, self._read_offset)

    @property
    def num_output_tokens(self) -> int:
        """Output tokens pushed so far."""
        return self._num_output_tokens

    def push(self, token_id: int) -> str:
        """Add one generated token.

        Args:
            token_id: the newly sampled token.

        Returns:
            The newly stable text (possibly ""); never ends with a partial character.
        """
        self._num_output_tokens += 1
        if self._stream is not None:
            chunk = self._stream.step(self._backend, token_id)
            if chunk is None:
                self._pending.append(token_id)
                return ""
            self._pending.clear()
            return str(chunk)
        self._ids.append(token_id)
        text = self._decode(self._prefix_offset, len(self._ids))
        if len(text) <= len(self._prefix_text) or text.endswith(REPLACEMENT_CHAR):
            return ""
        delta = text[len(self._prefix_text):]
        self._advance()
        return delta

    def flush(self) -> str:
        """Release the held-back tail, e.g. at the end of generation.

        Returns:
            The text of the pending tokens, with U+FFFD for bytes that never formed a
            character; "" when nothing is pending.
        """
        if self._stream is not None:
            text = self._decode_ids(self._pending, self.skip_special_tokens) if self._pending else ""
            self._pending.clear()
            return text
        text = self._decode(self._prefix_offset, len(self._ids))
        if len(text) <= len(self._prefix_text):
            return ""
        delta = text[len(self._prefix_text):]
        self._advance()
        return delta

    def _advance(self) -> None:
        # Drop tokens before the old read offset: the window stays a few tokens long.
        old_read = self._read_offset
        self._ids = self._ids[old_read:]
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._prefix_text = self._decode(0, self._read_offset)

    def _decode(self, start: int, stop: int) -> str:
        return self._decode_ids(self._ids[start:stop], self.skip_special_tokens)

    def _decode_ids(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=False)
        assert isinstance(text, str)
        return text

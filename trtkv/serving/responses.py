"""Engine outputs -> OpenAI response bodies and stream chunks (plain dicts).

Owns the JSON shapes of completions, chat completions, their chunks, logprobs and usage.
Knows nothing of HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from trtkv.runtime.outputs import CompletionOutput, RequestOutput
from trtkv.serving.tools import ToolCall, ToolPlan

LogprobEntry = tuple[int, float, tuple[tuple[int, float], ...]]


class ResponseBuilder:
    """Builds the bodies of one request (completion or chat, whole or chunked).

    Args:
        kind: "completion" or "chat".
        response_id: the ``id`` every body and chunk carries.
        model: the served model name.
        tokenizer: HF tokenizer for logprob token strings, or None ("token_id:N" strings).
        top_logprobs: how many alternatives each logprob entry lists.
        tools: chat with tools: finished choices are parsed into ``tool_calls``; streamed text
            that may be a tool call is held back until the choice finishes.
        max_tool_calls: most calls kept per choice (1 when ``parallel_tool_calls`` is false).
        eos_token_ids: the model's EOS ids: a choice ended by EOS has ``stop_reason`` null (as
            in vLLM); one ended by a stop string or a requested stop token id names it.
    """

    def __init__(self, kind: str, response_id: str, model: str, tokenizer: Any,
                 top_logprobs: int = 0, index_offset: int = 0, *, tools: ToolPlan | None = None,
                 max_tool_calls: int | None = None, eos_token_ids: Sequence[int] = ()) -> None:
        self.kind, self.id, self.model = kind, response_id, model
        self.index_offset = index_offset
        """Added to every choice index (prompt k of a batch: k * n)."""
        self.tokenizer = tokenizer
        self.top_logprobs = top_logprobs
        self.created = int(time.time())
        self._sent_role: set[int] = set()
        self._streamed: dict[int, int] = {}
        """Completions: characters of logprob tokens already streamed per choice (text_offset)."""
        self.tools = tools
        self.max_tool_calls = max_tool_calls
        self.eos_token_ids = frozenset(eos_token_ids)
        self.aborted = False
        """A streamed choice ended with "abort" (the server shut down): the stream must end
        with an error event, not with that finish_reason, which is not an OpenAI value."""
        self._text: dict[int, str] = {}
        """Chat with tools: each choice's text so far, and how much of it was streamed."""
        self._sent: dict[int, int] = {}

    def _tool_calls(self, c: CompletionOutput, text: str) -> tuple[str | None, list[ToolCall]]:
        """A finished chat choice's (content, tool calls); no calls without tools or when the
        output was cut short (a partial call is returned as content)."""
        if self.tools is None or c.finish_reason != "stop":
            return text, []
        content, calls = self.tools.extract(text)
        return content, calls[: self.max_tool_calls]

    # -- whole responses ------------------------------------------------------------------
    def response(self, out: RequestOutput) -> dict[str, Any]:
        choices = []
        for c in out.outputs:
            lps = self._logprobs(c.logprobs) if c.logprobs is not None else None
            if self.kind == "chat":
                content, calls = self._tool_calls(c, c.text)
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if calls:
                    message["tool_calls"] = [call.as_dict() for call in calls]
                choices.append({"index": c.index, "message": message, "logprobs": lps,
                                "finish_reason": "tool_calls" if calls else c.finish_reason,
                                "stop_reason": self._stop_reason(c)})
            else:
                choices.append({"index": c.index + self.index_offset, "text": c.text, "logprobs": lps,
                                "finish_reason": c.finish_reason, "stop_reason": self._stop_reason(c)})
        return {**self._head(chunk=False), "choices": choices, "usage": usage(out)}

    # -- streaming ------------------------------------------------------------------------
    def chunks(self, out: RequestOutput) -> list[dict[str, Any]]:
        """One chunk per sequence that has something new (text, tokens or a finish)."""
        result = []
        for c in out.outputs:
            if not (c.new_text or c.new_token_ids or c.finish_reason or
                    (self.kind == "chat" and c.index not in self._sent_role)):
                continue
            result.append({**self._head(chunk=True), "choices": [self._choice_delta(c)]})
        return result

    def usage_chunk(self, out: RequestOutput) -> dict[str, Any]:
        return {**self._head(chunk=True), "choices": [], "usage": usage(out)}

    def _choice_delta(self, c: CompletionOutput) -> dict[str, Any]:
        if c.finish_reason == "abort":
            self.aborted = True
            c = replace(c, finish_reason=None)
        lps = None
        if c.logprobs is not None and c.new_token_ids:
            lps = self._logprobs(c.logprobs[-len(c.new_token_ids):], start=self._streamed.get(c.index, 0))
            if self.kind != "chat":  # text_offset counts from the start of the completion
                self._streamed[c.index] = self._streamed.get(c.index, 0) + sum(len(t) for t in lps["tokens"])
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": c.new_text}
            finish = c.finish_reason
            if self.tools is not None:
                delta, finish = self._tool_delta(c)
            if c.index not in self._sent_role:
                self._sent_role.add(c.index)
                delta["role"] = "assistant"
            choice = {"index": c.index, "delta": delta, "logprobs": lps, "finish_reason": finish}
        else:
            choice = {"index": c.index + self.index_offset, "text": c.new_text, "logprobs": lps,
                      "finish_reason": c.finish_reason}
        if c.finish_reason is not None:
            choice["stop_reason"] = self._stop_reason(c)
        return choice

    def _stop_reason(self, c: CompletionOutput) -> int | str | None:
        """vLLM's ``stop_reason``: the stop string or stop token id; null for EOS and length."""
        if c.finish_reason != "stop" or c.stop_reason in self.eos_token_ids:
            return None
        return c.stop_reason

    def _tool_delta(self, c: CompletionOutput) -> tuple[dict[str, Any], str | None]:
        """A streamed chat delta with tools: text streams until it may be a tool call; the
        calls come whole in the finishing chunk."""
        text = self._text[c.index] = self._text.get(c.index, "") + c.new_text
        sent = self._sent.get(c.index, 0)
        assert self.tools is not None
        if c.finish_reason is None:
            if self.tools.may_be_call(text):
                return {"content": ""}, None
            self._sent[c.index] = len(text)
            return {"content": text[sent:]}, None
        content, calls = self._tool_calls(c, text)
        if not calls:
            return {"content": text[sent:]}, c.finish_reason
        return {"content": None, "tool_calls": [call.as_dict(index=k) for k, call in enumerate(calls)]}, "tool_calls"

    def _head(self, chunk: bool) -> dict[str, Any]:
        if self.kind == "chat":
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    # -- logprobs -------------------------------------------------------------------------
    def _token(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"token_id:{token_id}"
        return str(self.tokenizer.decode([token_id]))

    def _logprobs(self, entries: Sequence[LogprobEntry], start: int = 0) -> dict[str, Any]:
        # A masked token's logprob is -inf, which JSON cannot carry: clamped as vLLM does.
        entries = [(tid, _finite(lp), tuple((t, _finite(v)) for t, v in top)) for tid, lp, top in entries]
        if self.kind == "chat":
            return {"content": [{
                "token": self._token(tid), "logprob": lp,
                "bytes": list(self._token(tid).encode()),
                "top_logprobs": [{"token": self._token(t), "logprob": v,
                                  "bytes": list(self._token(t).encode())}
                                 for t, v in top[:self.top_logprobs]],
            } for tid, lp, top in entries]}
        tokens = [self._token(tid) for tid, _, _ in entries]
        offsets, pos = [], start
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [{self._token(t): v for t, v in top[:self.top_logprobs]}
                             for _, _, top in entries],
            "text_offset": offsets,
        }


MIN_LOGPROB = -9999.0
"""What a -inf logprob (a token the request's constraints forbid) is reported as."""


def _finite(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)


def was_aborted(out: RequestOutput) -> bool:
    """Some choice of ``out`` was stopped by the server (shutdown) before it finished."""
    return any(c.finish_reason == "abort" for c in out.outputs)


def usage(out: RequestOutput) -> dict[str, Any]:
    completion = sum(len(c.token_ids) for c in out.outputs)
    prompt = len(out.prompt_ids)
    body: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion,
                            "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens}}
    if any(c.capped for c in out.outputs):  # the server's --max-new-tokens-cap cut max_tokens
        body["max_tokens_capped"] = True
    return body


def sum_usage(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Usage of a batch: the parts' counts added (cached tokens too); flags kept if any is set."""
    total: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    for part in parts:
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            total[key] += part[key]
        total["prompt_tokens_details"]["cached_tokens"] += part["prompt_tokens_details"]["cached_tokens"]
        if part.get("max_tokens_capped"):
            total["max_tokens_capped"] = True
    return total

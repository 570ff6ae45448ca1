"""OpenAI request bodies -> engine inputs, with OpenAI-style errors.

Owns validation of `/v1/completions` and `/v1/chat/completions` bodies and the mapping of
their fields onto `SamplingParams`. Knows nothing of HTTP libraries: handlers catch `ApiError`
and render `ApiError.body()` with `ApiError.status`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trtkv.errors import InvalidRequestError, RequestRejectedError
from trtkv.runtime.sampling import SamplingParams

#: HTTP status per engine rejection reason. A full queue is back-pressure (retry later: 429);
#: a request that can never fit is the client's to change (400, like OpenAI's
#: context_length_exceeded) — and the official client retries 429s, which would not help.
REJECTION_STATUS = {"queue_full": 429, "too_long": 400, "kv_capacity": 400, "too_many_seqs": 400}

#: Our SamplingParams field -> the OpenAI parameter name clients know.
_PARAM_NAMES = {"max_new_tokens": "max_tokens"}


class ApiError(Exception):
    """An error response: status plus the OpenAI ``{"error": {...}}`` body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    @classmethod
    def from_engine(cls, exc: Exception) -> ApiError:
        """Map `InvalidRequestError` / `RequestRejectedError` onto a status and body."""
        if isinstance(exc, RequestRejectedError):
            status = REJECTION_STATUS.get(exc.reason, 400)
            code = "context_length_exceeded" if exc.reason == "too_long" else exc.reason
            kind = "rate_limit_error" if status == 429 else "invalid_request_error"
            return cls(status, f"{exc} (reason: {exc.reason})", type=kind, code=code)
        message = str(exc)
        name = message.split("=", 1)[0] if "=" in message else ""
        param = _PARAM_NAMES.get(name, name) if name.isidentifier() else None
        return cls(400, message, param=param)


@dataclass(frozen=True)
class GenerateRequest:
    """A validated request, ready for the engine."""

    model: str
    prompt: str | list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    priority: int = 0
    top_logprobs: int = 0
    cap_to_context: bool = False
    """max_tokens was not given: lower it to what the context has left."""


_UNSUPPORTED = ("suffix", "tools", "functions", "tool_choice", "function_call", "response_format")


class _Body:
    """Typed access to a JSON object; wrong types raise a 400 naming the parameter."""

    def __init__(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        self.raw = body

    def get(self, name: str, kinds: type | tuple[type, ...], default: Any = None,
            *, what: str = "") -> Any:
        value = self.raw.get(name, default)
        if value is None:
            return default
        kinds_t = kinds if isinstance(kinds, tuple) else (kinds,)
        is_bool = isinstance(value, bool)
        ok = isinstance(value, kinds_t) and (not is_bool or bool in kinds_t)
        if float in kinds_t and isinstance(value, int) and not is_bool:
            ok, value = True, float(value)
        if not ok:
            expected = what or " or ".join(k.__name__ for k in kinds_t)
            raise ApiError(400, f"'{name}' must be {expected}, got {type(value).__name__} {value!r:.40}",
                           param=name, code="invalid_type")
        return value

    def reject_unsupported(self) -> None:
        for name in _UNSUPPORTED:
            if self.raw.get(name) not in (None, [], {}, ""):
                raise ApiError(400, f"'{name}' is not supported by this server; remove it",
                               param=name, code="unsupported_parameter")
        if self.raw.get("logit_bias"):
            raise ApiError(400, "'logit_bias' is not supported; remove it", param="logit_bias",
                           code="unsupported_parameter")


def _stop(body: _Body) -> tuple[str, ...]:
    stop = body.raw.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(s for s in stop if s)
    raise ApiError(400, "'stop' must be a string or a list of strings", param="stop",
                   code="invalid_type")


def _sampling(body: _Body, max_tokens: int, logprobs: int | None) -> SamplingParams:
    n = body.get("n", int, 1)
    best_of = body.get("best_of", int, n)
    if best_of != n:
        raise ApiError(400, "'best_of' different from 'n' is not supported", param="best_of")
    stop_token_ids = body.get("stop_token_ids", list, [])
    try:
        return SamplingParams(
            n=n, max_new_tokens=max_tokens,
            temperature=body.get("temperature", float, 1.0),
            top_p=body.get("top_p", float, 1.0),
            top_k=body.get("top_k", int, 0),
            min_p=body.get("min_p", float, 0.0),
            repetition_penalty=body.get("repetition_penalty", float, 1.0),
            presence_penalty=body.get("presence_penalty", float, 0.0),
            frequency_penalty=body.get("frequency_penalty", float, 0.0),
            seed=body.get("seed", int),
            logprobs=logprobs,
            stop=_stop(body),
            stop_token_ids=tuple(stop_token_ids),
            ignore_eos=body.get("ignore_eos", bool, False),
            min_tokens=body.get("min_tokens", int, 0),
            skip_special_tokens=body.get("skip_special_tokens", bool, True),
        )
    except InvalidRequestError as exc:
        raise ApiError.from_engine(exc) from None


def _common(body: _Body) -> dict[str, Any]:
    model = body.get("model", str, "")
    if not model:
        raise ApiError(400, "'model' is required; GET /v1/models lists the served model",
                       param="model", code="missing_required_parameter")
    stream = body.get("stream", bool, False)
    options = body.get("stream_options", dict, {}, what="an object")
    include_usage = bool(options.get("include_usage", False)) if stream else False
    return {"model": model, "stream": stream, "include_usage": include_usage,
            "priority": body.get("priority", int, 0)}


def parse_completion(raw: Any) -> GenerateRequest:
    """Validate a `/v1/completions` body.

    Raises:
        ApiError: 400 naming the offending parameter.
    """
    body = _Body(raw)
    body.reject_unsupported()
    if body.raw.get("echo"):
        raise ApiError(400, "'echo' is not supported; remove it", param="echo",
                       code="unsupported_parameter")
    common = _common(body)
    prompt = body.raw.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompt = list(prompt)
    elif not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string or a list of token ids (one prompt per "
                       "request; send several requests for a batch)", param="prompt",
                       code="invalid_type")
    if not prompt:
        raise ApiError(400, "'prompt' is empty; give at least one token", param="prompt")
    logprobs = body.get("logprobs", int, None)
    params = _sampling(body, body.get("max_tokens", int, 16), logprobs)
    return GenerateRequest(prompt=prompt, params=params, top_logprobs=logprobs or 0, **common)


def parse_chat(raw: Any, default_max_tokens: int) -> tuple[GenerateRequest, list[dict[str, Any]]]:
    """Validate a `/v1/chat/completions` body; returns the request (prompt still empty) and
    the messages for the chat template.

    Raises:
        ApiError: 400 naming the offending parameter.
    """
    body = _Body(raw)
    body.reject_unsupported()
    common = _common(body)
    messages = body.get("messages", list, None, what="a list of messages")
    if not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str | list)):
            raise ApiError(400, f"messages[{i}] must be an object with a string 'role' and "
                           "'content'", param="messages", code="invalid_type")
        if isinstance(m["content"], list):  # content parts: keep the text ones
            parts = m["content"]
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                               param="messages")
            messages[i] = {**m, "content": "".join(str(p.get("text", "")) for p in parts)}
    max_tokens = body.get("max_tokens", int, body.get("max_completion_tokens", int, None))
    top = body.get("top_logprobs", int, 0)
    logprobs = top if body.get("logprobs", bool, False) else None
    params = _sampling(body, max_tokens or default_max_tokens, logprobs)
    request = GenerateRequest(prompt="", params=params, top_logprobs=top,
                              cap_to_context=max_tokens is None, **common)
    return request, messages

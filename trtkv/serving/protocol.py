"""OpenAI request bodies -> engine inputs, with OpenAI-style errors.

Owns validation of `/v1/completions` and `/v1/chat/completions` bodies and the mapping of
their fields onto `SamplingParams`. Knows nothing of HTTP libraries: handlers catch `ApiError`
and render `ApiError.body()` with `ApiError.status`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from trtkv.errors import InvalidRequestError, RequestRejectedError
from trtkv.runtime.sampling import GuidedDecoding, SamplingDefaults, SamplingParams
from trtkv.serving.tools import ToolError, ToolPlan, plan_tools, template_messages

_BUILT_IN = SamplingDefaults()

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
        if isinstance(exc, InvalidRequestError) and exc.param:
            param = exc.param
        for ours, theirs in _PARAM_NAMES.items():  # say the names clients send
            message = message.replace(ours, theirs)
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
    chat_template: str | None = None
    """Chat only: a Jinja template used instead of the model's."""
    batch: tuple[str | list[int], ...] = ()
    """Completions with several prompts: all of them (``prompt`` is the first); choice i of
    prompt k has index k * n + i, as OpenAI numbers them."""
    add_generation_prompt: bool = True
    """Chat only: end the rendered prompt with the assistant's turn header."""
    tools: ToolPlan | None = None
    """Chat only: the request's tools and what its tool_choice asks for."""
    parallel_tool_calls: bool = True
    """Chat only: False keeps the first tool call of a choice."""


_UNSUPPORTED = ("suffix", "tools", "functions", "function_call", "prompt_logprobs", "truncate_prompt_tokens",
                "chat_template_kwargs", "continue_final_message", "include_stop_str_in_output",
                "logits_processors", "guided_whitespace_pattern")
#: Parameters whose value here means "nothing to do": accepted only with that value.
_NO_OP_VALUES = {"tool_choice": ("none",)}


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
        if int in kinds_t and float not in kinds_t and isinstance(value, float) and value.is_integer():
            ok, value = True, int(value)  # 2.0 for an integer field, as pydantic takes it
        if not ok:
            expected = what or " or ".join(k.__name__ for k in kinds_t)
            raise ApiError(400, f"'{name}' must be {expected}, got {type(value).__name__} {value!r:.40}",
                           param=name, code="invalid_type")
        return value

    def reject_unsupported(self, allowed: tuple[str, ...] = ()) -> None:
        """400 ``unsupported_parameter`` for every parameter this server would otherwise ignore
        (``allowed``: the ones this endpoint handles itself)."""
        for name in _UNSUPPORTED:
            if name in allowed:
                continue
            if self.raw.get(name) not in (None, [], {}, ""):
                raise ApiError(400, f"'{name}' is not supported by this server; remove it",
                               param=name, code="unsupported_parameter")
        for name, values in _NO_OP_VALUES.items():
            if name not in allowed and self.raw.get(name) is not None and self.raw[name] not in values:
                raise ApiError(400, f"'{name}' {self.raw[name]!r:.60} is not supported by this server; only "
                               f"{' or '.join(map(repr, values))}", param=name, code="unsupported_parameter")
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


#: vLLM's structured-output parameters (``guided_*`` and the newer ``structured_outputs``
#: object's keys) -> our constraint kinds.
_GUIDED_PARAMS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                  "guided_grammar": "grammar"}


def _constraint(kind: str, value: Any, param: str) -> GuidedDecoding:
    try:
        if kind == "json" and isinstance(value, dict | str):
            return GuidedDecoding.json_schema(value, param)
        if kind == "choice" and isinstance(value, list):
            return GuidedDecoding.choice(value, param)
        if kind in ("regex", "grammar") and isinstance(value, str):
            return GuidedDecoding(kind, value, param)
    except InvalidRequestError as exc:
        raise ApiError(400, f"'{param}': {exc}", param=param) from None
    expected = {"json": "a JSON schema (object or string)", "choice": "a list of strings"}.get(kind, "a string")
    raise ApiError(400, f"'{param}' must be {expected}", param=param, code="invalid_type")


def _guided(body: _Body) -> GuidedDecoding | None:
    """The request's structured-output constraint: ``response_format`` (OpenAI) or vLLM's
    ``guided_*`` / ``structured_outputs``; at most one."""
    found: list[tuple[str, GuidedDecoding]] = []
    fmt = body.raw.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "json_object":
            found.append(("response_format", GuidedDecoding.json_object("response_format")))
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object",
                               param="response_format")
            found.append(("response_format", _constraint("json", schema, "response_format")))
        elif kind != "text":
            raise ApiError(400, "response_format.type must be text, json_object or json_schema",
                           param="response_format")
    for name, kind in _GUIDED_PARAMS.items():
        if body.raw.get(name) is not None:
            found.append((name, _constraint(kind, body.raw[name], name)))
    outputs = body.raw.get("structured_outputs")
    if outputs is not None:
        if not isinstance(outputs, dict):
            raise ApiError(400, "'structured_outputs' must be an object", param="structured_outputs")
        for key, value in outputs.items():
            kind = key if key in ("json", "regex", "choice", "grammar") else None
            if kind is None:
                raise ApiError(400, f"structured_outputs.{key} is not supported; give json, regex, "
                               "choice or grammar", param="structured_outputs", code="unsupported_parameter")
            found.append((f"structured_outputs.{key}", _constraint(kind, value, "structured_outputs")))
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise ApiError(400, f"give one structured-output constraint, not several ({names})",
                       param=found[1][0])
    return found[0][1] if found else None


def _sampling(body: _Body, defaults: SamplingDefaults, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
    """The body's sampling parameters; what it leaves out comes from ``defaults``."""
    n = body.get("n", int, 1)
    best_of = body.get("best_of", int, n)
    if best_of != n:
        raise ApiError(400, "'best_of' different from 'n' is not supported", param="best_of")
    stop_token_ids = body.get("stop_token_ids", list, [])
    try:
        return defaults.params(
            n=n, max_new_tokens=max_tokens,
            temperature=body.get("temperature", float),
            top_p=body.get("top_p", float),
            top_k=body.get("top_k", int),
            min_p=body.get("min_p", float),
            repetition_penalty=body.get("repetition_penalty", float),
            presence_penalty=body.get("presence_penalty", float, 0.0),
            frequency_penalty=body.get("frequency_penalty", float, 0.0),
            seed=body.get("seed", int),
            logprobs=logprobs,
            stop=_stop(body),
            stop_token_ids=tuple(stop_token_ids),
            ignore_eos=body.get("ignore_eos", bool, False),
            min_tokens=body.get("min_tokens", int, 0),
            skip_special_tokens=body.get("skip_special_tokens", bool, True),
            guided=_guided(body),
            use_beam_search=body.get("use_beam_search", bool, False),
            length_penalty=body.get("length_penalty", float, 1.0),
            early_stopping=_early_stopping(body),
        )
    except InvalidRequestError as exc:
        raise ApiError.from_engine(exc) from None


def _early_stopping(body: _Body) -> bool | str:
    """vLLM's extra parameter: true, false or "never"."""
    value = body.raw.get("early_stopping", False)
    if value is True or value is False or value == "never":
        return value  # type: ignore[no-any-return]
    raise ApiError(400, f"'early_stopping' must be true, false or \"never\", got {value!r:.40}", param="early_stopping")


def _common(body: _Body) -> dict[str, Any]:
    model = body.get("model", str, "")  # "" = the served model (it is optional, as in vLLM)
    stream = body.get("stream", bool, False)
    options = body.get("stream_options", dict, None, what="an object")
    if options is not None and not stream:
        raise ApiError(400, "'stream_options' is only allowed with \"stream\": true", param="stream_options")
    options = options or {}
    for key in options:
        if key != "include_usage":
            raise ApiError(400, f"stream_options.{key} is not supported; only include_usage",
                           param="stream_options", code="unsupported_parameter")
    include_usage = bool(options.get("include_usage", False))
    return {"model": model, "stream": stream, "include_usage": include_usage,
            "priority": body.get("priority", int, 0)}


def parse_completion(raw: Any, defaults: SamplingDefaults = _BUILT_IN) -> GenerateRequest:
    """Validate a `/v1/completions` body; ``defaults``: the model's sampling defaults.

    Raises:
        ApiError: 400 naming the offending parameter.
    """
    body = _Body(raw)
    body.reject_unsupported()
    if body.raw.get("echo"):
        raise ApiError(400, "'echo' is not supported; remove it", param="echo",
                       code="unsupported_parameter")
    common = _common(body)
    prompts = _prompts(body.raw.get("prompt"))
    logprobs = body.get("logprobs", int, None)
    params = _sampling(body, defaults, body.get("max_tokens", int, None), logprobs)
    return GenerateRequest(prompt=prompts[0], params=params, top_logprobs=logprobs or 0,
                           batch=tuple(prompts) if len(prompts) > 1 else (), **common)


#: Most prompts one /v1/completions request may carry (each is an engine request).
MAX_BATCH_PROMPTS = 64


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def _prompts(prompt: Any) -> list[str | list[int]]:
    """`prompt` as OpenAI allows it: a string, token ids, or a batch of either."""
    if prompt == []:
        raise ApiError(400, "'prompt' is empty; give at least one token", param="prompt")
    if isinstance(prompt, str) or _is_ids(prompt):
        items: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        items = list(prompt)
    else:
        raise ApiError(400, "'prompt' must be a string, a list of token ids, or a list of those (a batch)",
                       param="prompt", code="invalid_type")
    if len(items) > MAX_BATCH_PROMPTS:
        raise ApiError(400, f"'prompt' holds {len(items)} prompts; at most {MAX_BATCH_PROMPTS} per request",
                       param="prompt")
    if any(not p for p in items):
        raise ApiError(400, "'prompt' is empty; give at least one token", param="prompt")
    return [p if isinstance(p, str) else list(p) for p in items]


def parse_chat(raw: Any, default_max_tokens: int, *, tool_parser: str = "none",
               auto_tools: bool = False, defaults: SamplingDefaults = _BUILT_IN,
               ) -> tuple[GenerateRequest, list[dict[str, Any]]]:
    """Validate a `/v1/chat/completions` body; returns the request (prompt still empty) and
    the messages for the chat template.

    Args:
        tool_parser: the server's ``--tool-call-parser`` (``tool_choice: "auto"`` output).
        auto_tools: the server's ``--enable-auto-tool-choice``.

    Raises:
        ApiError: 400 naming the offending parameter.
    """
    body = _Body(raw)
    body.reject_unsupported(allowed=("tools", "tool_choice"))
    common = _common(body)
    messages = body.get("messages", list, None, what="a list of messages")
    if not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        calls_only = isinstance(m, dict) and m.get("content") is None and m.get("tool_calls")
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and (isinstance(m.get("content"), str | list) or calls_only)):
            raise ApiError(400, f"messages[{i}] must be an object with a string 'role' and "
                           "'content'", param="messages", code="invalid_type")
        if isinstance(m.get("content"), list):  # content parts: keep the text ones
            parts = m["content"]
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                               param="messages")
            messages[i] = {**m, "content": "".join(str(p.get("text", "")) for p in parts)}
    if body.raw.get("echo"):
        raise ApiError(400, "'echo' is not supported on chat completions; remove it", param="echo",
                       code="unsupported_parameter")
    try:
        parallel = body.get("parallel_tool_calls", bool, True)
        tools = plan_tools(body.raw.get("tools"), body.raw.get("tool_choice"), parser=tool_parser,
                           auto_enabled=auto_tools, parallel=parallel)
        messages = template_messages(messages)
    except ToolError as exc:
        raise ApiError(400, str(exc), param=exc.param) from None
    # OpenAI deprecated max_tokens for max_completion_tokens: the newer name wins.
    max_tokens = body.get("max_completion_tokens", int, body.get("max_tokens", int, None))
    wants_logprobs = body.get("logprobs", bool, False)
    top = body.get("top_logprobs", int, None)
    if top is not None and not wants_logprobs:
        raise ApiError(400, "'top_logprobs' needs \"logprobs\": true", param="top_logprobs")
    logprobs = (top or 0) if wants_logprobs else None
    params = _sampling(body, defaults, max_tokens or default_max_tokens, logprobs)
    if tools is not None and tools.constraint is not None:
        if params.guided is not None:
            raise ApiError(400, "a forced tool_choice is a structured-output constraint already; "
                           "drop response_format / guided_*", param="tool_choice")
        params = replace(params, guided=tools.constraint)
    request = GenerateRequest(prompt="", params=params, top_logprobs=top or 0,
                              cap_to_context=max_tokens is None,
                              chat_template=body.get("chat_template", str, None),
                              add_generation_prompt=body.get("add_generation_prompt", bool, True),
                              tools=tools, parallel_tool_calls=parallel,
                              **common)
    return request, messages

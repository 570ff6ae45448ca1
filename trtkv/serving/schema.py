"""Pydantic models of the request bodies: the OpenAPI schema the server publishes and the
first, type-level check of every body.

They describe what clients send (OpenAI's fields and vLLM's extra ones) and allow unknown
fields, as OpenAI does; the rules beyond types (ranges, combinations, unsupported values)
are `trtkv.serving.protocol`'s, which reads the same body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trtkv.serving.protocol import ApiError


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


Text = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class _Sampling(_Body):
    model: str | None = Field(None, description="the served model's id; optional")
    n: int | None = Field(None, ge=1, description="completions per prompt")
    best_of: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, description="0 = greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="0 = off")
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**64)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(None, ge=0)
    skip_special_tokens: bool | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    priority: int | None = None
    user: str | None = None
    response_format: dict[str, Any] | None = Field(
        None, description='{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": ...}}')
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: Annotated[list[Text], Field(min_length=1)] | None = None
    guided_grammar: str | None = None
    structured_outputs: dict[str, Any] | None = None
    use_beam_search: bool | None = Field(None, description="beam search with n beams (vLLM's extra parameter)")
    length_penalty: float | None = Field(None, description="beam search: score = logprob sum / length ** this")
    early_stopping: bool | Literal["never"] | None = Field(None, description="beam search: true, false or \"never\"")


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: (Text | TokenIds | Annotated[list[Text], Field(min_length=1, max_length=64)]
             | Annotated[list[TokenIds], Field(min_length=1, max_length=64)]) = Field(
        description="text, token ids, or a batch (at most 64) of either")
    max_tokens: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


Content = str | list[TextPart]


class FunctionCall(_Body):
    name: str
    arguments: str = Field(description="the arguments as JSON text")


class ToolCall(_Body):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Body):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Body):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Body):
    role: Literal["assistant"]
    content: Content | None = Field(None, description="may be null when tool_calls is given")
    name: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(_Body):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    chat_template: str | None = None
    add_generation_prompt: bool | None = None


class TokenizeRequest(_Body):
    """POST /tokenize: ``prompt`` or ``messages``."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = None
    chat_template: str | None = None


class DetokenizeRequest(_Body):
    """POST /detokenize."""

    model: str | None = None
    tokens: list[int]


def check(model: type[BaseModel], body: Any) -> None:
    """Type-check ``body`` against ``model``.

    Raises:
        ApiError: 400 naming the first field in error, as OpenAI reports it.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else None
        raise ApiError(400, f"'{field}': {first['msg']}" if field else str(first["msg"]), param=field,
                       code="invalid_type") from None

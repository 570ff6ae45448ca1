"""Chat prompts: messages -> token ids under the model's chat template.

Owns the one rendering of a conversation that `LLM.chat`, `trtkv generate --chat`,
`trtkv chat` and the server's ``/v1/chat/completions`` share, and reading a template file.
Must not import serving code, torch or tensorrt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trtkv.errors import ConfigError, InvalidRequestError

Message = dict[str, Any]
"""One chat message: ``{"role": "system" | "user" | "assistant" | ..., "content": str}``."""


class NoChatTemplateError(InvalidRequestError):
    """The model has no tokenizer, or its tokenizer has no chat template and none was given."""


def check_chat_template(tokenizer: Any, chat_template: str | None = None) -> None:
    """Raise unless ``tokenizer`` can render chats (with ``chat_template`` when given).

    Raises:
        NoChatTemplateError: no tokenizer, or no template on it and none given.
    """
    if tokenizer is None:
        raise NoChatTemplateError("this model has no tokenizer files, so it cannot render chat "
                                  "messages; export it from a checkpoint that has a tokenizer")
    if not chat_template and not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplateError("this model's tokenizer has no chat template; give one "
                                  "(--chat-template FILE, or chat_template=...) or use plain prompts")


def render_chat(tokenizer: Any, messages: Sequence[Message], *, chat_template: str | None = None,
                add_generation_prompt: bool = True, tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of ``messages`` under the chat template.

    The template writes any special tokens it wants (BOS included), so the rendered text is
    encoded without adding more.

    Args:
        tokenizer: the model's HF tokenizer (``Engine.tokenizer``), or None.
        messages: the conversation, oldest first; each a dict with string ``role`` and ``content``.
        chat_template: a Jinja template used instead of the tokenizer's own.
        add_generation_prompt: end with the template's opening of an assistant turn.
        tools: OpenAI-style tool definitions, for templates that describe tools to the model.

    Returns:
        The prompt's token ids.

    Raises:
        NoChatTemplateError: no tokenizer, or no chat template.
        InvalidRequestError: the messages are malformed or the template rejects them.
    """
    check_chat_template(tokenizer, chat_template)
    if not messages:
        raise InvalidRequestError("the chat has no messages; give at least one")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise InvalidRequestError(f"messages[{i}] must be a dict with a string 'role' and "
                                      f"'content', got {m!r:.80}")
    try:
        text = tokenizer.apply_chat_template(list(messages), chat_template=chat_template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt, tools=tools)
    except Exception as exc:  # jinja errors: syntax, roles the template refuses, missing fields
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise InvalidRequestError(f"the chat template rejected the messages: {detail}") from None
    return list(tokenizer.encode(text, add_special_tokens=False))


def read_chat_template(path: str | Path) -> str:
    """The text of a Jinja chat template file.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8 or empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the chat template {path}: {exc.strerror or exc}; "
                          "give the path of a Jinja template file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the chat template {path} is not UTF-8 text; give a Jinja template file") from None
    if not text.strip():
        raise ConfigError(f"the chat template {path} is empty; give a Jinja template file")
    return text

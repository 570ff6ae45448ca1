"""Tool calling on `/v1/chat/completions`: the request's tools, the constraint a forced
``tool_choice`` implies, and tool calls parsed back out of the generated text.

``tool_choice``:
    ``none``      tools are not shown to the model; plain text comes back.
    ``auto``      tools go to the chat template; the text is parsed by the server's
                  ``--tool-call-parser`` (needs ``--enable-auto-tool-choice``, as in vLLM).
    ``required``  the output is forced (a JSON grammar) to a list of calls of the given tools.
    a function    ``{"type": "function", "function": {"name": N}}``: forced to N's arguments.

Parsers (``--tool-call-parser``): ``hermes`` (``<tool_call>{"name": ..., "arguments": {...}}
</tool_call>``, Qwen 2.5 / Hermes / many others) and ``llama3_json`` (a JSON object
``{"name": ..., "parameters": {...}}``, several separated by ``;``, optionally after
``<|python_tag|>``). Knows nothing of HTTP.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from trtkv.runtime.sampling import GuidedDecoding

PARSERS = ("none", "hermes", "llama3_json")
MAX_TOOLS = 128


class ToolError(ValueError):
    """A malformed ``tools`` / ``tool_choice`` / tool message; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str
    """The arguments as JSON text (the OpenAI wire format)."""
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def as_dict(self, index: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "type": "function",
                                "function": {"name": self.name, "arguments": self.arguments}}
        return body if index is None else {"index": index, **body}


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools mean for this generation.

    Attributes:
        tools: the tools as the chat template receives them (None: not shown).
        mode: ``auto``, ``required`` or ``named`` (``none`` gives no plan at all).
        name: the forced function (``named``).
        constraint: the grammar a forced choice implies (None for ``auto``).
        parser: how ``auto`` output is parsed.
    """

    tools: list[dict[str, Any]]
    mode: str
    name: str = ""
    constraint: GuidedDecoding | None = None
    parser: str = "none"

    def extract(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, tool calls) of one finished choice's text."""
        if self.mode == "named":
            return None, [ToolCall(self.name, text.strip())]
        if self.mode == "required":
            try:
                calls = json.loads(text)
            except ValueError:  # cut by max_tokens: no complete call
                return text, []
            return None, [ToolCall(c["name"], json.dumps(c["parameters"])) for c in calls]
        return parse_tool_calls(self.parser, text)

    def may_be_call(self, text: str) -> bool:
        """Whether streamed ``text`` may turn into a tool call (so it must be held back)."""
        if self.mode != "auto":
            return True
        if self.parser == "hermes":
            return "<tool_call>" in text or any(text.endswith("<tool_call>"[:k]) for k in range(1, 11))
        stripped = text.lstrip()
        return stripped == "" or stripped.startswith(("{", "<|python_tag|>"[: len(stripped)]))


def plan_tools(tools: Any, tool_choice: Any, *, parser: str, auto_enabled: bool,
               parallel: bool = True) -> ToolPlan | None:
    """Validate ``tools`` and ``tool_choice``; None when no tool use is asked for.

    Args:
        parallel: the request's ``parallel_tool_calls`` (False: at most one call).

    Raises:
        ToolError: malformed tools, an unknown function, or ``auto`` on a server started
            without ``--enable-auto-tool-choice --tool-call-parser``.
    """
    if tools is None or tools == []:
        if tool_choice not in (None, "none"):
            raise ToolError("'tool_choice' needs 'tools'", "tool_choice")
        return None
    functions = _functions(tools)
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return None
    if choice == "auto":
        if not auto_enabled or parser == "none":
            raise ToolError('"auto" tool choice needs a server started with --enable-auto-tool-choice '
                            "and --tool-call-parser hermes|llama3_json; or pass tool_choice "
                            '"required" or a function', "tool_choice")
        return ToolPlan(list(tools), "auto", parser=parser)
    if choice == "required":
        calls: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": [
            {"type": "object", "properties": {"name": {"const": name}, "parameters": schema},
             "required": ["name", "parameters"], "additionalProperties": False}
            for name, schema in functions.items()]}}
        if not parallel:  # parallel_tool_calls: false -> exactly one call
            calls["maxItems"] = 1
        return ToolPlan(list(tools), "required", constraint=GuidedDecoding.json_schema(calls, "tool_choice"))
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in functions:
            raise ToolError(f"tool_choice names function {name!r}, which is not in 'tools'", "tool_choice")
        return ToolPlan(list(tools), "named", name=name,
                        constraint=GuidedDecoding.json_schema(functions[name], "tool_choice"))
    raise ToolError('\'tool_choice\' must be "none", "auto", "required" or {"type": "function", '
                    '"function": {"name": ...}}', "tool_choice")


def _functions(tools: Any) -> dict[str, dict[str, Any]]:
    """name -> parameters schema of every tool (all must be functions)."""
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise ToolError(f"'tools' must be a list of at most {MAX_TOOLS} tools", "tools")
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(fn, dict) or not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise ToolError(f'tools[{i}] must be {{"type": "function", "function": {{"name": N, '
                            f'"parameters": SCHEMA}}}} with N of letters, digits, _ . - (64 at most)', "tools")
        params = fn.get("parameters", {"type": "object"})
        if not isinstance(params, dict):
            raise ToolError(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
        if name in functions:
            raise ToolError(f"tools[{i}]: function {name!r} is given twice", "tools")
        functions[name] = params or {"type": "object"}
    return functions


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: assistant ``tool_calls`` arguments as objects
    (clients send JSON text), ``content`` "" where a tool-calling assistant sent none.

    Raises:
        ToolError: a malformed ``tool_calls`` entry or tool message.
    """
    out = []
    for i, m in enumerate(messages):
        m = dict(m)
        calls = m.get("tool_calls")
        if calls is not None:
            if m.get("role") != "assistant" or not isinstance(calls, list):
                raise ToolError(f"messages[{i}].tool_calls must be a list on an assistant message", "messages")
            fixed = []
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if not (isinstance(fn, dict) and isinstance(fn.get("name"), str)):
                    raise ToolError(f"messages[{i}].tool_calls entries need function.name", "messages")
                args = fn.get("arguments", "{}")
                try:
                    args = json.loads(args) if isinstance(args, str) else args
                except ValueError:
                    raise ToolError(f"messages[{i}].tool_calls: arguments must be JSON text", "messages") from None
                fixed.append({**call, "function": {"name": fn["name"], "arguments": args}})
            m["tool_calls"] = fixed
            if m.get("content") is None:
                m["content"] = ""
        if m.get("role") == "tool" and not isinstance(m.get("content"), str):
            raise ToolError(f"messages[{i}] (a tool result) needs string 'content'", "messages")
        out.append(m)
    return out


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def parse_tool_calls(parser: str, text: str) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of model text; text that holds no well-formed call is all content."""
    if parser == "hermes":
        calls = []
        for body in _HERMES.findall(text):
            call = _call(body, "arguments")
            if call is None:
                return text, []
            calls.append(call)
        if not calls:
            return text, []
        content = _HERMES.sub("", text).strip()
        return content or None, calls
    if parser == "llama3_json":
        body = text.strip().removeprefix("<|python_tag|>").strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        for part in _split_json_objects(body):
            call = _call(part, "parameters") or _call(part, "arguments")
            if call is None:
                return text, []
            calls.append(call)
        return (None, calls) if calls else (text, [])
    return text, []


def _call(body: str, args_key: str) -> ToolCall | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not (isinstance(obj, dict) and isinstance(obj.get("name"), str) and isinstance(obj.get(args_key), dict)):
        return None
    return ToolCall(obj["name"], json.dumps(obj[args_key]))


def _split_json_objects(text: str) -> list[str]:
    """``{...}; {...}`` -> the objects' texts (``;`` or whitespace between them)."""
    decoder = json.JSONDecoder()
    parts, pos = [], 0
    while pos < len(text):
        try:
            _, end = decoder.raw_decode(text, pos)
        except ValueError:
            return [text]  # not a list of objects: let the caller see one bad part
        parts.append(text[pos:end])
        pos = end
        while pos < len(text) and text[pos] in " \t\r\n;":
            pos += 1
    return parts

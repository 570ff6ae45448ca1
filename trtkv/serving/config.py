"""Server options: one frozen dataclass whose field help is the `trtkv serve` option help."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from trtkv.errors import ConfigError
from trtkv.runtime.sampling_defaults import DEFAULT_CHAT_MAX_NEW_TOKENS


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerConfig:
    """Options of the OpenAI-compatible HTTP server."""

    host: str = _opt("127.0.0.1", "interface to listen on (0.0.0.0 for every interface)")
    port: int = _opt(8000, "TCP port to listen on (0 picks a free one)")
    served_model_name: str = _opt("", "model id clients must send; empty = the model dir's name")
    api_key: str = _opt("", "require 'Authorization: Bearer KEY' on /v1/*; empty = no auth")
    max_request_bytes: int = _opt(1 << 20, "largest request body accepted, in bytes (413 above)")
    drain_timeout_s: float = _opt(10.0, "on shutdown, seconds in-flight requests may finish before abort")
    request_timeout_s: float = _opt(30.0, "seconds a client may take to send a request body (408 and close after)")
    default_chat_max_tokens: int = _opt(DEFAULT_CHAT_MAX_NEW_TOKENS, "chat max_tokens when the client gives none (capped by the context)")
    enable_auto_tool_choice: bool = _opt(False, 'allow tool_choice "auto": the model decides, '
                                         "--tool-call-parser reads its calls")
    tool_call_parser: str = field(default="none", metadata={
        "help": "how tool calls are read from the model's text: hermes (<tool_call> JSON </tool_call>) "
                "or llama3_json (a JSON object)", "choices": ("none", "hermes", "llama3_json")})

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535 (0 = any free port), got {self.port}")
        if self.max_request_bytes < 1:
            raise ConfigError(f"--max-request-bytes must be >= 1, got {self.max_request_bytes}")
        if self.default_chat_max_tokens < 1:
            raise ConfigError(f"--default-chat-max-tokens must be >= 1, got {self.default_chat_max_tokens}")
        if not (math.isfinite(self.drain_timeout_s) and self.drain_timeout_s >= 0):
            raise ConfigError(f"--drain-timeout-s must be a finite number >= 0, got {self.drain_timeout_s}")
        if self.tool_call_parser not in ("none", "hermes", "llama3_json"):
            raise ConfigError(f"--tool-call-parser must be none, hermes or llama3_json, got {self.tool_call_parser!r}")
        if self.enable_auto_tool_choice and self.tool_call_parser == "none":
            raise ConfigError("--enable-auto-tool-choice needs --tool-call-parser hermes|llama3_json")
        if not (math.isfinite(self.request_timeout_s) and self.request_timeout_s > 0):
            raise ConfigError(f"--request-timeout-s must be a finite number > 0, got {self.request_timeout_s}")

"""Server options: one frozen dataclass whose field help is the `trtkv serve` option help."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
    default_chat_max_tokens: int = _opt(256, "chat max_tokens when the client gives none (capped by the context)")

"""The contract between the runner and a target: `BaseClient`, `TargetInfo`, `RequestRecord`.

Two clients implement it: `trtkv.bench.http_client.HttpClient` (a running server) and
`trtkv.bench.engine_client.EngineClient` (the engine in this process). This module imports
neither aiohttp nor the runtime; `create_client` imports the one it needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trtkv.bench.config import BenchConfig
from trtkv.bench.workload import RequestSpec

Clock = Callable[[], float]
"""Seconds since the benchmark started."""

STATUS_OK, STATUS_REJECTED, STATUS_FAILED = "ok", "rejected", "failed"


@dataclass(frozen=True)
class TargetInfo:
    """What the benchmark learned about its target before sending anything.

    Attributes:
        description: the URL or model directory, for the report.
        model_name: the model id requests name.
        vocab_size: size of the vocabulary; 0 when the target does not say.
        max_model_len: longest prompt + output; 0 when the target does not say.
    """

    description: str
    model_name: str
    vocab_size: int = 0
    max_model_len: int = 0


@dataclass
class RequestRecord:
    """What one request measured; times are seconds since the benchmark started.

    Attributes:
        index / prompt_len / output_len: the request as specified.
        start_s / end_s: when it was sent / when its last byte (or error) arrived.
        chunk_times_s: arrival time of each streamed piece with tokens.
        chunk_tokens: output tokens in each of those pieces.
        num_output_tokens: output tokens received (the server's usage count when it gives one).
        status: "ok", "rejected" (back-pressure: HTTP 429 / `RequestRejectedError`) or "failed".
        reason: the rejection reason, e.g. "queue_full".
        error: what went wrong, for failed requests.
    """

    index: int
    prompt_len: int
    output_len: int
    start_s: float = 0.0
    end_s: float = 0.0
    chunk_times_s: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    num_output_tokens: int = 0
    status: str = STATUS_FAILED
    reason: str = ""
    error: str = ""

    @classmethod
    def for_spec(cls, spec: RequestSpec) -> RequestRecord:
        return cls(spec.index, len(spec.prompt_ids), spec.output_len)

    def add_chunk(self, time_s: float, num_tokens: int) -> None:
        self.chunk_times_s.append(time_s)
        self.chunk_tokens.append(num_tokens)
        self.num_output_tokens += num_tokens

    def reject(self, reason: str, message: str) -> None:
        self.status, self.reason, self.error = STATUS_REJECTED, reason, message

    def fail(self, message: str) -> None:
        self.status, self.error = STATUS_FAILED, message

    @property
    def is_ok(self) -> bool:
        return self.status == STATUS_OK


class BaseClient(ABC):
    """Sends benchmark requests to one target.

    Contract: `open` before anything else (it may raise a `TrtkvError` saying what to fix);
    `send` records one request's outcome and never raises for a request that failed or was
    rejected (only for cancellation); `close` releases everything, even after a failed open.
    """

    @abstractmethod
    async def open(self) -> TargetInfo:
        """Connect to / load the target and describe it."""

    @abstractmethod
    async def send(self, spec: RequestSpec, record: RequestRecord, clock: Clock) -> None:
        """Send ``spec`` (greedy, EOS ignored, streamed) and fill ``record``."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections / shut the engine down."""


def create_client(config: BenchConfig, engine_config: Any = None) -> BaseClient:
    """The client for ``config``'s target: a server (``--url``) or a model dir in-process.

    Args:
        config: benchmark options.
        engine_config: `EngineConfig` for in-process mode; None = defaults.

    Raises:
        MissingExtraError: ``--url`` without aiohttp (the ``bench`` extra).
    """
    if config.url:
        from trtkv._optional import require

        require("aiohttp", "bench", "trtkv bench --url")
        from trtkv.bench.http_client import HttpClient

        return HttpClient(config.url, api_key=config.api_key, model_name=config.model_name,
                          timeout_s=config.timeout_s)
    from trtkv.bench.engine_client import EngineClient

    return EngineClient(config.model_dir, engine_config)

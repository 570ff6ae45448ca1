"""`HttpClient`: benchmark requests sent to an OpenAI-compatible server over HTTP.

Each request is a streamed ``POST /v1/completions`` with the prompt as token ids,
``ignore_eos`` and ``stream_options.include_usage``; the SSE ``data:`` lines are timed as they
arrive. One streamed chunk with a choice counts as one token step (the server sends one chunk
per engine step), and the final usage chunk gives the exact output token count.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from trtkv.bench.clients import STATUS_OK, BaseClient, Clock, RequestRecord, TargetInfo
from trtkv.bench.workload import RequestSpec
from trtkv.errors import ConfigError, TrtkvError

#: Error codes of a 400 that are capacity rejections (can never fit), not malformed requests.
_REJECTION_CODES = {"context_length_exceeded": "too_long", "kv_capacity": "kv_capacity"}


class ServerUnreachableError(TrtkvError):
    """No server answered at the benchmark's URL."""


class HttpClient(BaseClient):
    """Drives a running server.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted).
        api_key: sent as ``Authorization: Bearer KEY`` when non-empty.
        model_name: model id to request; empty = the first one ``GET /v1/models`` lists.
        timeout_s: longest wait for the next bytes of a response.
    """

    def __init__(self, url: str, *, api_key: str = "", model_name: str = "",
                 timeout_s: float = 600.0) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self.api_key = api_key
        self.model_name = model_name
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> TargetInfo:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        # limit=0: aiohttp's default pool of 100 connections would silently cap concurrency.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=self.timeout_s),
        )
        models_url = f"{self.url}/v1/models"
        try:
            async with self._session.get(models_url, timeout=aiohttp.ClientTimeout(total=30.0)) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServerUnreachableError(
                f"cannot reach a server at {self.url} (GET {models_url} failed: "
                f"{_describe(exc)}); start one with `trtkv serve MODEL_DIR` or fix --url"
            ) from None
        if status == 401:
            raise ConfigError(f"{models_url} refused the API key (HTTP 401); pass the server's "
                              "key with --api-key")
        if status != 200:
            raise TrtkvError(f"GET {models_url} answered HTTP {status}: {text[:200]!r}; is "
                             "--url an OpenAI-compatible server such as `trtkv serve`?")
        return self._target(models_url, text)

    def _target(self, models_url: str, text: str) -> TargetInfo:
        try:
            models = {m["id"]: m for m in json.loads(text)["data"]}
        except (ValueError, KeyError, TypeError):
            raise TrtkvError(f"GET {models_url} did not return an OpenAI model list; is --url "
                             "an OpenAI-compatible server such as `trtkv serve`?") from None
        if not models:
            raise TrtkvError(f"the server at {self.url} serves no models")
        name = self.model_name or next(iter(models))
        if name not in models:
            raise ConfigError(f"--model-name {name!r} is not served at {self.url}; it serves "
                              f"{sorted(models)}")
        self.model_name = name
        model: dict[str, Any] = models[name]
        return TargetInfo(self.url, name, vocab_size=int(model.get("vocab_size", 0) or 0),
                          max_model_len=int(model.get("max_model_len", 0) or 0))

    async def send(self, spec: RequestSpec, record: RequestRecord, clock: Clock) -> None:
        assert self._session is not None, "open() first"
        body = {"model": self.model_name, "prompt": list(spec.prompt_ids),
                "max_tokens": spec.output_len, "temperature": 0.0, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}
        record.start_s = clock()
        try:
            async with self._session.post(f"{self.url}/v1/completions", json=body) as resp:
                if resp.status != 200:
                    _record_http_error(record, resp.status, await resp.text())
                    return
                await _read_stream(resp, record, clock)
        except (aiohttp.ClientError, TimeoutError) as exc:
            record.fail(_describe(exc))
        finally:
            record.end_s = clock()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_stream(resp: aiohttp.ClientResponse, record: RequestRecord, clock: Clock) -> None:
    finish_reason: str | None = None
    usage_tokens: int | None = None
    async for line in resp.content:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        now = clock()
        try:
            chunk = json.loads(data)
        except ValueError:
            record.fail(f"the stream carried invalid JSON: {data[:80]!r}")
            return
        if "error" in chunk:
            record.fail(f"error in the stream: {chunk['error'].get('message', chunk['error'])}")
            return
        for choice in chunk.get("choices") or ():
            record.add_chunk(now, 1)
            finish_reason = choice.get("finish_reason") or finish_reason
        if chunk.get("usage"):
            usage_tokens = int(chunk["usage"]["completion_tokens"])
    if usage_tokens is not None:
        record.num_output_tokens = usage_tokens
    if finish_reason in ("length", "stop"):
        record.status = STATUS_OK
    else:
        record.fail(f"the stream ended with finish_reason {finish_reason!r}")


def _record_http_error(record: RequestRecord, status: int, text: str) -> None:
    try:
        error = json.loads(text)["error"]
        code, message = str(error.get("code") or ""), str(error.get("message") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        code, message = "", text[:200]
    if status == 429 or code in _REJECTION_CODES:
        record.reject(_REJECTION_CODES.get(code, code or f"http_{status}"), message)
    else:
        record.fail(f"HTTP {status}: {message}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"

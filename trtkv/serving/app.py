"""The OpenAI-compatible HTTP application (aiohttp) over an `AsyncEngine`.

Owns routes, authentication, body limits, SSE streaming and HTTP error rendering. Request
validation lives in `protocol`, response shapes in `responses`, metric names in `prometheus`;
the engine is reached only through `AsyncEngine`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, NamedTuple

from aiohttp import web

from trtkv.errors import InvalidRequestError, RequestRejectedError
from trtkv.runtime import chat
from trtkv.runtime.async_engine import AsyncEngine, EngineClosedError, RequestStream
from trtkv.runtime.engine import Engine
from trtkv.runtime.outputs import RequestOutput
from trtkv.serving import prometheus
from trtkv.serving.config import ServerConfig
from trtkv.serving.protocol import ApiError, GenerateRequest, parse_chat, parse_completion
from trtkv.serving.responses import ResponseBuilder, sum_usage, was_aborted

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATUS_CLIENT_GONE = 499  # nginx's convention for "client closed the request"


class OpenAIServer:
    """Routes and state of one server over one engine.

    Args:
        engine: the async engine (this server shuts it down on application shutdown).
        config: server options.
        model_name: the id clients must send as ``model``.
    """

    def __init__(self, engine: AsyncEngine, config: ServerConfig, model_name: str) -> None:
        self.engine = engine
        self.config = config
        self.model_name = model_name
        self.created = int(time.time())
        self.http_requests: Counter[tuple[str, int]] = Counter()
        self.client_disconnects = 0
        self.num_active_streams = 0

    def create_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_request_bytes,
                              middlewares=[self._errors_middleware, self._auth_middleware])
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model_id:.+}", self.model)
        app.router.add_get("/version", self.version)
        app.router.add_get("/ping", self.ping)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        # Listening has stopped: let in-flight requests finish, then abort the rest.
        await self.engine.shutdown(self.config.drain_timeout_s)

    # -- middlewares ----------------------------------------------------------------------
    @web.middleware
    async def _errors_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        endpoint = route.canonical if route is not None else "other"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except ApiError as exc:
            status = exc.status
            return _error_response(exc)
        except web.HTTPException as exc:  # routing: 404 unknown path, 405 wrong method, 413
            status = exc.status
            code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(status)
            return _error_response(ApiError(status, exc.reason, code=code))
        except asyncio.CancelledError:
            status = STATUS_CLIENT_GONE
            raise
        except Exception as exc:  # a bug: keep serving, say so
            return _error_response(ApiError(500, f"internal error: {exc!r}", type="internal_error"))
        finally:
            self.http_requests[(endpoint, status)] += 1

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = self.config.api_key
        if key and request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {key}"
            # surrogateescape: a header with bytes that are not UTF-8 is simply a wrong key.
            if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode()):
                raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                               type="authentication_error", code="invalid_api_key")
        return await handler(request)

    # -- simple routes --------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        if not self.engine.is_running:
            return web.json_response({"status": "unavailable"}, status=503)
        return web.json_response({"status": "ok"})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_card()]})

    async def model(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        self._check_model(model_id)
        return web.json_response(self._model_card())

    async def version(self, request: web.Request) -> web.Response:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as package_version

        try:
            return web.json_response({"version": package_version("trtkv")})
        except PackageNotFoundError:
            return web.json_response({"version": "unknown"})

    async def ping(self, request: web.Request) -> web.Response:
        return await self.health(request)

    async def tokenize(self, request: web.Request) -> web.Response:
        """vLLM's /tokenize: ``prompt`` (text) or ``messages`` (chat) -> token ids and count."""
        body = await _read_json(request, self.config.request_timeout_s)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        self._check_model(body.get("model") or "")
        add_special = body.get("add_special_tokens", True)
        if not isinstance(add_special, bool):
            raise ApiError(400, "'add_special_tokens' must be a boolean", param="add_special_tokens")
        if "messages" in body:
            req, messages = parse_chat({"messages": body["messages"]}, self.config.default_chat_max_tokens)
            gen_prompt = body.get("add_generation_prompt", True)
            ids = await self.engine.call(lambda e: render_chat(
                e, messages, chat_template=body.get("chat_template") if isinstance(body.get("chat_template"), str)
                else None, add_generation_prompt=bool(gen_prompt)))
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise ApiError(400, "give 'prompt' (a non-empty string) or 'messages'", param="prompt")
            ids = await self.engine.call(lambda e: _encode(e, prompt, add_special))
        return web.json_response({"count": len(ids), "max_model_len": self.engine.engine.scheduler.config.max_model_len,
                                  "tokens": ids})

    async def detokenize(self, request: web.Request) -> web.Response:
        """vLLM's /detokenize: token ids -> text."""
        body = await _read_json(request, self.config.request_timeout_s)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        self._check_model(body.get("model") or "")
        tokens = body.get("tokens")
        vocab = self.engine.engine.manifest.vocab_size
        if not (isinstance(tokens, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in tokens)):
            raise ApiError(400, "'tokens' must be a list of token ids", param="tokens", code="invalid_type")
        if any(not 0 <= t < vocab for t in tokens):
            raise ApiError(400, f"'tokens' holds ids outside the vocabulary [0, {vocab})", param="tokens")
        tokenizer = self.engine.engine.tokenizer
        if tokenizer is None:
            raise ApiError(400, "this model has no tokenizer; it cannot detokenize", code="no_tokenizer")
        text = await self.engine.call(lambda e: e.tokenizer.decode(tokens))
        return web.json_response({"prompt": text})

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "trtkv",
                "max_model_len": self.engine.engine.scheduler.config.max_model_len}

    async def metrics(self, request: web.Request) -> web.Response:
        snapshot = await self.engine.call(prometheus.collect)
        server = {"http_requests": dict(self.http_requests),
                  "client_disconnects": self.client_disconnects,
                  "active_streams": self.num_active_streams}
        return web.Response(body=prometheus.render(snapshot, server, self.model_name),
                            headers={"Content-Type": prometheus.CONTENT_TYPE})

    # -- generation -----------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        req = parse_completion(await _read_json(request, self.config.request_timeout_s))
        self._check_model(req.model)
        if req.batch:
            return await self._generate_batch(request, req)
        return await self._generate(request, "completion", "cmpl", req)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        req, messages = parse_chat(await _read_json(request, self.config.request_timeout_s),
                                   self.config.default_chat_max_tokens, tool_parser=self.config.tool_call_parser,
                                   auto_tools=self.config.enable_auto_tool_choice)
        tools = req.tools.tools if req.tools is not None else None
        self._check_model(req.model)
        # The tokenizer is used by the engine's thread too: render there, between steps.
        prompt_ids = await self.engine.call(lambda e: render_chat(
            e, messages, chat_template=req.chat_template, add_generation_prompt=req.add_generation_prompt,
            tools=tools))
        params = req.params
        if req.cap_to_context:
            room = self.engine.engine.scheduler.config.max_model_len - len(prompt_ids)
            params = replace(params, max_new_tokens=max(1, min(params.max_new_tokens, room)))
        return await self._generate(request, "chat", "chatcmpl",
                                    replace(req, prompt=prompt_ids, params=params))

    def _eos_ids(self, req: GenerateRequest) -> tuple[int, ...]:
        """EOS ids that a request did not also ask for as stop_token_ids (stop_reason null)."""
        return tuple(t for t in self.engine.engine.eos_token_ids if t not in req.params.stop_token_ids)

    def _check_model(self, model: str) -> None:
        if model and model != self.model_name:  # "" (not given): the served model
            raise ApiError(404, f"model {model!r} does not exist; this server serves "
                           f"{self.model_name!r}", param="model", code="model_not_found")

    async def _generate(self, request: web.Request, kind: str, prefix: str,
                        req: GenerateRequest) -> web.StreamResponse:
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        headers = {"X-Request-Id": _client_request_id(request) or request_id}
        try:
            stream = await self.engine.add_request(req.prompt, req.params, request_id=request_id,
                                                   priority=req.priority)
        except (InvalidRequestError, RequestRejectedError) as exc:
            raise ApiError.from_engine(exc) from None
        except EngineClosedError as exc:
            raise ApiError(503, str(exc), type="service_unavailable") from None
        builder = ResponseBuilder(kind, request_id, self.model_name, self.engine.engine.tokenizer,
                                  req.top_logprobs, tools=req.tools,
                                  max_tool_calls=None if req.parallel_tool_calls else 1,
                                  eos_token_ids=self._eos_ids(req))
        if not req.stream:
            try:
                final = None
                async for out in stream:
                    final = out
            except EngineClosedError as exc:
                raise ApiError(503, str(exc), type="service_unavailable") from None
            finally:
                await stream.aclose()
            assert final is not None
            if was_aborted(final):
                raise _shutting_down()
            return web.json_response(builder.response(final), headers=headers)
        return await self._stream(request, stream, builder, req.include_usage, headers)

    async def _generate_batch(self, request: web.Request, req: GenerateRequest) -> web.StreamResponse:
        """Several prompts in one completion request: one engine request each, all admitted or
        none; choice i of prompt k gets index k * n + i, usage is summed."""
        response_id = f"cmpl-{uuid.uuid4().hex}"
        headers = {"X-Request-Id": _client_request_id(request) or response_id}
        if len(req.batch) * req.params.n > self.engine.engine.scheduler.config.max_num_seqs:
            raise ApiError(400, f"{len(req.batch)} prompts x n={req.params.n} exceed --max-num-seqs "
                           f"({self.engine.engine.scheduler.config.max_num_seqs}); send fewer prompts",
                           param="prompt")
        streams: list[RequestStream] = []
        try:
            for k, prompt in enumerate(req.batch):
                streams.append(await self.engine.add_request(prompt, req.params, request_id=f"{response_id}-{k}",
                                                             priority=req.priority))
        except (InvalidRequestError, RequestRejectedError, EngineClosedError) as exc:
            for stream in streams:
                await stream.aclose()
            if isinstance(exc, EngineClosedError):
                raise ApiError(503, str(exc), type="service_unavailable") from None
            raise ApiError.from_engine(exc) from None
        builders = [ResponseBuilder("completion", response_id, self.model_name, self.engine.engine.tokenizer,
                                    req.top_logprobs, index_offset=k * req.params.n, eos_token_ids=self._eos_ids(req))
                    for k in range(len(streams))]
        if req.stream:
            merged = _MergedStream(streams)
            return await self._stream(request, merged, _BatchBuilder(builders), req.include_usage, headers)
        try:
            finals = []
            for stream in streams:
                final = None
                async for out in stream:
                    final = out
                assert final is not None
                finals.append(final)
        except EngineClosedError as exc:
            raise ApiError(503, str(exc), type="service_unavailable") from None
        finally:
            for stream in streams:
                await stream.aclose()
        if any(was_aborted(f) for f in finals):
            raise _shutting_down()
        bodies = [b.response(f) for b, f in zip(builders, finals, strict=True)]
        body = {**bodies[0], "choices": [c for b in bodies for c in b["choices"]],
                "usage": sum_usage([b["usage"] for b in bodies])}
        return web.json_response(body, headers=headers)

    async def _stream(self, request: web.Request, stream: Any, builder: Any,
                      include_usage: bool, headers: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache", **headers})
        self.num_active_streams += 1
        last: Any = None  # a RequestOutput, or a _BatchItem of a batched completion
        try:
            await response.prepare(request)
            try:
                async for out in stream:
                    last = out
                    for chunk in builder.chunks(out):
                        await response.write(_sse(chunk))
                if builder.aborted:
                    await response.write(_sse(_shutting_down().body()))
                elif include_usage and last is not None:
                    await response.write(_sse(builder.usage_chunk(last)))
            except EngineClosedError as exc:
                await response.write(_sse(ApiError(503, str(exc), type="service_unavailable").body()))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            if last is None or not last.finished:
                self.client_disconnects += 1
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.num_active_streams -= 1
            await stream.aclose()  # aborts the request unless it finished
        return response


def _encode(engine: Engine, prompt: str, add_special_tokens: bool) -> list[int]:
    if engine.tokenizer is None:
        raise ApiError(400, "this model has no tokenizer; it cannot tokenize text", code="no_tokenizer")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "'prompt' is not valid UTF-8 text", param="prompt") from None
    return list(engine.tokenizer.encode(prompt, add_special_tokens=add_special_tokens))


def _shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down and stopped this request before it finished; "
                    "retry on another replica", type="service_unavailable", code="shutting_down")


def render_chat(engine: Engine, messages: list[dict[str, Any]], *, chat_template: str | None = None,
                add_generation_prompt: bool = True, tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of ``messages`` under the tokenizer's chat template (or ``chat_template``),
    rendered by `trtkv.runtime.chat.render_chat`.

    Raises:
        ApiError: 400 when the model has no tokenizer or chat template, or the template fails.
    """
    try:
        return chat.render_chat(engine.tokenizer, messages, chat_template=chat_template,
                                add_generation_prompt=add_generation_prompt, tools=tools)
    except chat.NoChatTemplateError:
        raise ApiError(400, "this model has no chat template; use /v1/completions instead",
                       code="no_chat_template") from None
    except InvalidRequestError as exc:  # jinja errors: roles the template refuses, missing fields
        raise ApiError(400, str(exc), param="messages") from None


class _MergedStream:
    """Outputs of several request streams as one async iterator: ``(k, output)`` pairs as they
    come; ends when every stream has finished. Closing it closes (aborts) them all."""

    def __init__(self, streams: list[RequestStream]) -> None:
        self.streams = streams
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.is_finished = False
        self._tasks = [asyncio.ensure_future(self._pump(k, s)) for k, s in enumerate(streams)]
        self._open = len(streams)

    async def _pump(self, k: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                await self._queue.put((k, out))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            await self._queue.put((k, exc))
        await self._queue.put((k, None))

    def __aiter__(self) -> _MergedStream:
        return self

    async def __anext__(self) -> _BatchItem:
        while self._open:
            k, item = await self._queue.get()
            if item is None:
                self._open -= 1
                continue
            if isinstance(item, BaseException):
                raise item
            return _BatchItem(k, item, self._open == 1 and item.finished)
        self.is_finished = True
        raise StopAsyncIteration

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for stream in self.streams:
            await stream.aclose()


class _BatchItem(NamedTuple):
    """One output of prompt ``k`` of a batch; ``finished``: the whole batch is done."""

    k: int
    out: RequestOutput
    finished: bool


class _BatchBuilder:
    """Chunks of a batched completion stream: each ``(k, output)`` through prompt k's builder;
    the usage chunk sums the finished outputs."""

    def __init__(self, builders: list[ResponseBuilder]) -> None:
        self.builders = builders
        self.finals: dict[int, Any] = {}

    def chunks(self, item: _BatchItem) -> list[dict[str, Any]]:
        k, out = item.k, item.out
        if out.finished:
            self.finals[k] = out
        return self.builders[k].chunks(out)

    @property
    def aborted(self) -> bool:
        return any(b.aborted for b in self.builders)

    def usage_chunk(self, last: Any) -> dict[str, Any]:
        parts = [self.builders[k].usage_chunk(out) for k, out in sorted(self.finals.items())]
        return {**parts[0], "usage": sum_usage([p["usage"] for p in parts])}


def _client_request_id(request: web.Request) -> str | None:
    """The client's X-Request-Id when it is a short printable token (echoed back), else None."""
    value = request.headers.get("X-Request-Id", "")
    ok = 0 < len(value) <= 128 and value.isprintable() and value.isascii() and " " not in value
    return value if ok else None


#: Deepest nesting of arrays/objects a request body may have (OpenAI bodies need about 6).
MAX_JSON_DEPTH = 64


async def _read_json(request: web.Request, timeout_s: float) -> Any:
    """The request body as JSON: at most ``client_max_size`` bytes, sent within ``timeout_s``,
    nested at most MAX_JSON_DEPTH deep, every string valid Unicode (no lone surrogates)."""
    try:
        data = await asyncio.wait_for(request.read(), timeout_s)
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body exceeds {request.app._client_max_size} bytes; "
                       "send a shorter prompt", code="request_too_large") from None
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g} s",
                       code="request_timeout") from None
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels",
                       code="invalid_json") from None
    _check_json(body)
    return body


def _check_json(body: Any) -> None:
    """Depth and string checks, iteratively (a deep body must not exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "a string in the body is not valid Unicode (a lone surrogate "
                               "such as \\ud800); send UTF-8 text", code="invalid_json") from None
            continue
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(400, f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels",
                               code="invalid_json")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                if isinstance(k, str):
                    stack.append((k, depth))
                stack.append((v, depth + 1))


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _error_response(exc: ApiError) -> web.Response:
    headers = {"Retry-After": "1"} if exc.status == 429 else None
    response = web.json_response(exc.body(), status=exc.status, headers=headers)
    if exc.status == 408:  # the rest of a late body must not be read as the next request
        response.force_close()
    return response

"""The OpenAI-compatible HTTP application (FastAPI) over an `AsyncEngine`.

Owns routes, authentication, body limits and read timeouts, SSE streaming and HTTP error
rendering (every error is OpenAI's JSON shape). Request types are `schema`'s pydantic models
(the published OpenAPI schema), request rules `protocol`'s, response shapes `responses`',
metric names `prometheus`'; the engine is reached only through `AsyncEngine`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, NamedTuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trtkv.errors import InvalidRequestError, RequestRejectedError
from trtkv.runtime import chat
from trtkv.runtime.async_engine import AsyncEngine, EngineClosedError, RequestStream
from trtkv.runtime.engine import Engine
from trtkv.runtime.outputs import RequestOutput
from trtkv.serving import prometheus, schema
from trtkv.serving.config import ServerConfig
from trtkv.serving.protocol import ApiError, GenerateRequest, parse_chat, parse_completion
from trtkv.serving.responses import ResponseBuilder, sum_usage, was_aborted

STATUS_CLIENT_GONE = 499  # nginx's convention for "client closed the request"


def _body_schema(model: type[Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body itself (limits, timeouts) but
    publishes ``model`` as its request body."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


class OpenAIServer:
    """Routes and state of one server over one engine.

    Args:
        engine: the async engine (the server shuts it down when it stops).
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

    def create_app(self) -> ASGIApp:
        """The ASGI application: FastAPI routes inside the auth / accounting middleware."""
        app = FastAPI(title="trtkv", summary="OpenAI-compatible server over a paged KV cache",
                      version=_package_version(), docs_url=None, redoc_url=None)
        app.add_exception_handler(ApiError, _api_error_handler)  # type: ignore[arg-type]
        app.add_exception_handler(StarletteHTTPException, _http_error_handler)  # type: ignore[arg-type]
        app.add_exception_handler(RequestValidationError, _validation_error_handler)  # type: ignore[arg-type]
        app.add_exception_handler(Exception, _internal_error_handler)
        get, post = app.get, app.post
        get("/health")(self.health)
        get("/ping")(self.ping)
        get("/version")(self.version)
        get("/metrics")(self.metrics)
        get("/v1/models")(self.models)
        get("/v1/models/{model_id:path}")(self.model)
        post("/v1/completions", openapi_extra=_body_schema(schema.CompletionRequest))(self.completions)
        post("/v1/chat/completions", openapi_extra=_body_schema(schema.ChatCompletionRequest))(self.chat_completions)
        post("/tokenize", openapi_extra=_body_schema(schema.TokenizeRequest))(self.tokenize)
        post("/detokenize", openapi_extra=_body_schema(schema.DetokenizeRequest))(self.detokenize)
        original = app.openapi

        def openapi() -> dict[str, Any]:  # the body models, referenced by openapi_extra
            if app.openapi_schema is None:
                doc = original()
                components = doc.setdefault("components", {}).setdefault("schemas", {})
                for model in (schema.CompletionRequest, schema.ChatCompletionRequest,
                              schema.TokenizeRequest, schema.DetokenizeRequest):
                    spec = model.model_json_schema(ref_template="#/components/schemas/{model}")
                    components.update(spec.pop("$defs", {}))
                    components[model.__name__] = spec
                app.openapi_schema = doc
            return app.openapi_schema

        app.openapi = openapi  # type: ignore[method-assign]
        return _Gate(app, self)

    # -- simple routes --------------------------------------------------------------------
    async def health(self) -> JSONResponse:
        if not self.engine.is_running:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def ping(self) -> JSONResponse:
        return await self.health()

    async def version(self) -> dict[str, str]:
        return {"version": _package_version()}

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_card()]}

    async def model(self, model_id: str) -> dict[str, Any]:
        self._check_model(model_id)
        return self._model_card()

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "trtkv",
                "max_model_len": self.engine.max_model_len}

    async def metrics(self) -> Response:
        snapshot = await self.engine.call(prometheus.collect)
        server = {"http_requests": dict(self.http_requests),
                  "client_disconnects": self.client_disconnects,
                  "active_streams": self.num_active_streams}
        return Response(prometheus.render(snapshot, server, self.model_name),
                        headers={"Content-Type": prometheus.CONTENT_TYPE})

    async def tokenize(self, request: Request) -> dict[str, Any]:
        """vLLM's /tokenize: ``prompt`` (text) or ``messages`` (chat) -> token ids and count."""
        body = await self._body(request, schema.TokenizeRequest)
        self._check_model(body.get("model") or "")
        if "messages" in body:
            _, messages = parse_chat({"messages": body["messages"]}, self.config.default_chat_max_tokens)
            ids = await self.engine.call(lambda e: render_chat(
                e, messages, chat_template=body.get("chat_template"),
                add_generation_prompt=body.get("add_generation_prompt", True) is not False))
        else:
            prompt = body.get("prompt")
            if not prompt:
                raise ApiError(400, "give 'prompt' (a non-empty string) or 'messages'", param="prompt")
            add_special = body.get("add_special_tokens", True) is not False
            ids = await self.engine.call(lambda e: _encode(e, prompt, add_special))
        return {"count": len(ids), "max_model_len": self.engine.max_model_len,
                "tokens": ids}

    async def detokenize(self, request: Request) -> dict[str, Any]:
        """vLLM's /detokenize: token ids -> text."""
        body = await self._body(request, schema.DetokenizeRequest)
        self._check_model(body.get("model") or "")
        tokens = body["tokens"]
        vocab = self.engine.vocab_size
        if any(not 0 <= t < vocab for t in tokens):
            raise ApiError(400, f"'tokens' holds ids outside the vocabulary [0, {vocab})", param="tokens")
        if self.engine.tokenizer is None:
            raise ApiError(400, "this model has no tokenizer; it cannot detokenize", code="no_tokenizer")
        return {"prompt": await self.engine.call(lambda e: e.tokenizer.decode(tokens))}

    # -- generation -----------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        req = parse_completion(await self._body(request, schema.CompletionRequest), self.engine.sampling_defaults)
        self._check_model(req.model)
        if req.batch:
            return await self._generate_batch(request, req)
        return await self._generate(request, "completion", "cmpl", req)

    async def chat_completions(self, request: Request) -> Response:
        req, messages = parse_chat(await self._body(request, schema.ChatCompletionRequest),
                                   self.config.default_chat_max_tokens, tool_parser=self.config.tool_call_parser,
                                   auto_tools=self.config.enable_auto_tool_choice,
                                   defaults=self.engine.sampling_defaults)
        tools = req.tools.tools if req.tools is not None else None
        self._check_model(req.model)
        # The tokenizer is used by the engine's thread too: render there, between steps.
        prompt_ids = await self.engine.call(lambda e: render_chat(
            e, messages, chat_template=req.chat_template, add_generation_prompt=req.add_generation_prompt,
            tools=tools))
        params = req.params
        if req.cap_to_context:
            room = self.engine.max_model_len - len(prompt_ids)
            params = replace(params, max_new_tokens=max(1, min(params.max_new_tokens, room)))
        return await self._generate(request, "chat", "chatcmpl",
                                    replace(req, prompt=prompt_ids, params=params))

    async def _body(self, request: Request, model: type[Any]) -> dict[str, Any]:
        body = await _read_json(request, self.config.max_request_bytes, self.config.request_timeout_s)
        schema.check(model, body)
        return dict(body)

    def _eos_ids(self, req: GenerateRequest) -> tuple[int, ...]:
        """EOS ids that a request did not also ask for as stop_token_ids (stop_reason null)."""
        return tuple(t for t in self.engine.eos_token_ids if t not in req.params.stop_token_ids)

    def _check_model(self, model: str) -> None:
        if model and model != self.model_name:  # "" (not given): the served model
            raise ApiError(404, f"model {model!r} does not exist; this server serves "
                           f"{self.model_name!r}", param="model", code="model_not_found")

    async def _generate(self, request: Request, kind: str, prefix: str, req: GenerateRequest) -> Response:
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        headers = {"X-Request-Id": _client_request_id(request) or request_id}
        try:
            stream = await self.engine.add_request(req.prompt, req.params, request_id=request_id,
                                                   priority=req.priority)
        except (InvalidRequestError, RequestRejectedError) as exc:
            raise ApiError.from_engine(exc) from None
        except EngineClosedError as exc:
            raise ApiError(503, str(exc), type="service_unavailable") from None
        builder = ResponseBuilder(kind, request_id, self.model_name, self.engine.tokenizer,
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
            return JSONResponse(builder.response(final), headers=headers)
        return self._stream(stream, builder, req.include_usage, headers)

    async def _generate_batch(self, request: Request, req: GenerateRequest) -> Response:
        """Several prompts in one completion request: one engine request each, all admitted or
        none; choice i of prompt k gets index k * n + i, usage is summed."""
        response_id = f"cmpl-{uuid.uuid4().hex}"
        headers = {"X-Request-Id": _client_request_id(request) or response_id}
        if len(req.batch) * req.params.n > self.engine.max_num_seqs:
            raise ApiError(400, f"{len(req.batch)} prompts x n={req.params.n} exceed --max-num-seqs "
                           f"({self.engine.max_num_seqs}); send fewer prompts",
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
        builders = [ResponseBuilder("completion", response_id, self.model_name, self.engine.tokenizer,
                                    req.top_logprobs, index_offset=k * req.params.n, eos_token_ids=self._eos_ids(req))
                    for k in range(len(streams))]
        if req.stream:
            return self._stream(_MergedStream(streams), _BatchBuilder(builders), req.include_usage, headers)
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
        return JSONResponse(body, headers=headers)

    def _stream(self, stream: Any, builder: Any, include_usage: bool, headers: dict[str, str]) -> Response:
        """An SSE response: the builder's chunks as the engine makes them, then ``[DONE]``.
        A client that hangs up cancels the generator, which aborts the request."""

        async def events() -> AsyncIterator[bytes]:
            self.num_active_streams += 1
            last: Any = None  # a RequestOutput, or a _BatchItem of a batched completion
            try:
                try:
                    async for out in stream:
                        last = out
                        for chunk in builder.chunks(out):
                            yield _sse(chunk)
                    if builder.aborted:
                        yield _sse(_shutting_down().body())
                    elif include_usage and last is not None:
                        yield _sse(builder.usage_chunk(last))
                except EngineClosedError as exc:
                    yield _sse(ApiError(503, str(exc), type="service_unavailable").body())
                yield b"data: [DONE]\n\n"
            except (asyncio.CancelledError, GeneratorExit):
                if last is None or not last.finished:
                    self.client_disconnects += 1
                raise
            finally:
                self.num_active_streams -= 1
                await stream.aclose()  # aborts the request unless it finished

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", **headers})


class _Gate:
    """ASGI middleware around the FastAPI app: the API key on ``/v1/*`` (before routing, so
    an unknown /v1 path without a key is a 401 too) and the per-route request counter."""

    def __init__(self, app: FastAPI, server: OpenAIServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, complete = 500, False
        key = self.server.config.api_key

        async def counting_send(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            if key and scope["path"].startswith("/v1/"):
                given = dict(scope["headers"]).get(b"authorization", b"")
                if not hmac.compare_digest(given, b"Bearer " + key.encode()):
                    error = ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                                     type="authentication_error", code="invalid_api_key")
                    await _error_response(error)(scope, receive, counting_send)
                    return
            await self.app(scope, receive, counting_send)
        except asyncio.CancelledError:
            status = STATUS_CLIENT_GONE
            raise
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            if not complete:  # the client hung up before the whole response was sent
                status = STATUS_CLIENT_GONE
            self.server.http_requests[(endpoint, status)] += 1


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


def _encode(engine: Engine, prompt: str, add_special_tokens: bool) -> list[int]:
    if engine.tokenizer is None:
        raise ApiError(400, "this model has no tokenizer; it cannot tokenize text", code="no_tokenizer")
    return list(engine.tokenizer.encode(prompt, add_special_tokens=add_special_tokens))


def _shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down and stopped this request before it finished; "
                    "retry on another replica", type="service_unavailable", code="shutting_down")


def _client_request_id(request: Request) -> str | None:
    """The client's X-Request-Id when it is a short printable token (echoed back), else None."""
    value = request.headers.get("X-Request-Id", "")
    ok = 0 < len(value) <= 128 and value.isprintable() and value.isascii() and " " not in value
    return value if ok else None


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trtkv")
    except PackageNotFoundError:
        return "unknown"


#: Deepest nesting of arrays/objects a request body may have (OpenAI bodies need about 6).
MAX_JSON_DEPTH = 64


async def _read_json(request: Request, max_bytes: int, timeout_s: float) -> Any:
    """The request body as JSON: at most ``max_bytes`` bytes, sent within ``timeout_s``,
    nested at most MAX_JSON_DEPTH deep, every string valid Unicode (no lone surrogates)."""
    too_large = ApiError(413, f"request body exceeds {max_bytes} bytes; send a shorter prompt",
                         code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large

    async def read() -> bytes:
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        data = await asyncio.wait_for(read(), timeout_s)
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


def _error_response(exc: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 429 else {}
    if exc.status in (408, 413):  # the rest of an unread body must not be read as the next request
        headers["Connection"] = "close"
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc)


async def _http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _error_response(ApiError(exc.status_code, str(exc.detail), code=code))


async def _validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    field = str(first["loc"][-1]) if first["loc"] else None
    return _error_response(ApiError(400, f"'{field}': {first['msg']}", param=field, code="invalid_type"))


async def _internal_error_handler(request: Request, exc: Exception) -> JSONResponse:  # a bug: say so
    return _error_response(ApiError(500, f"internal error: {exc!r}", type="internal_error"))


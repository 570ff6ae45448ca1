"""`AsyncEngine`: the synchronous `Engine` behind an asyncio interface, for servers.

Owns the driver task and the per-request output streams; the `Engine` still owns requests,
scheduling and KV blocks. Every call into the engine (add, abort, step, stats) runs on one
worker thread, so they are serialised: adds and aborts land between steps, never during one,
and the event loop stays free while a step computes. Must not import HTTP libraries or
other serving code.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from trtkv.errors import InvalidRequestError, TrtkvError
from trtkv.runtime.engine import Engine
from trtkv.runtime.outputs import RequestOutput
from trtkv.runtime.sampling import SamplingDefaults, SamplingParams

T = TypeVar("T")


class EngineClosedError(TrtkvError):
    """The engine is shutting down (or a step failed) and takes no new requests."""


class RequestStream:
    """The outputs of one request, as they are produced. Iterate with ``async for``.

    Each item is a `RequestOutput` whose `CompletionOutput.new_text` / ``new_token_ids`` hold
    what that step added; the last item has ``finished=True``. Leaving the loop early (break,
    cancellation, `aclose`) aborts the request so its KV blocks are freed.
    """

    def __init__(self, owner: AsyncEngine, request_id: str) -> None:
        self.request_id = request_id
        self._owner = owner
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.is_finished = False

    def put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.is_finished:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:  # cancelled while waiting: the consumer is gone
            await self.aclose()
            raise
        if isinstance(item, BaseException):
            self._close()
            raise item
        if item.finished:
            self._close()
        return item

    async def aclose(self) -> None:
        """Stop consuming; aborts the request if it has not finished."""
        if not self.is_finished:
            self._close()
            self._owner.abort(self.request_id)

    def _close(self) -> None:
        self.is_finished = True
        self._owner._streams.pop(self.request_id, None)


class AsyncEngine:
    """Drive an `Engine` from asyncio: one background task steps it while requests exist.

    Args:
        engine: the engine to drive; nothing else may call it while this object is in use.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trtkv-engine")
        self._streams: dict[str, RequestStream] = {}
        self._pending_aborts: list[str] = []
        self._aborts_lock = threading.Lock()
        self._wakeup: asyncio.Event | None = None
        self._driver: asyncio.Task[None] | None = None
        self._stepping = False
        """The driver has a step in flight or outputs not yet handed to their streams."""
        self._closed = False
        self.error: BaseException | None = None
        """The exception that stopped the driver, if a step failed."""

    # -- requests -------------------------------------------------------------------------
    async def add_request(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                          *, request_id: str | None = None, priority: int = 0,
                          cache_salt: str | None = None) -> RequestStream:
        """Queue a request and return its output stream.

        Raises:
            EngineClosedError: the engine is shutting down or has failed.
            InvalidRequestError, RequestRejectedError: from `Engine.add_request`.
        """
        if self._closed or self.error is not None:
            raise EngineClosedError("the engine is shutting down; retry on another replica")
        request_id = request_id or f"req-{uuid.uuid4().hex}"
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        stream = RequestStream(self, request_id)
        self._streams[request_id] = stream
        try:
            await self.call(lambda e: e.add_request(prompt, params, request_id=request_id,
                                                    priority=priority, cache_salt=cache_salt))
        except asyncio.CancelledError:
            # The worker may still run the add: an abort queued behind it undoes it.
            self._streams.pop(request_id, None)
            self._executor.submit(self.engine.abort, request_id)
            raise
        except BaseException:
            self._streams.pop(request_id, None)
            raise
        self._kick()
        return stream

    async def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
                       request_id: str | None = None, priority: int = 0,
                       cache_salt: str | None = None) -> AsyncIterator[RequestOutput]:
        """Stream a request's incremental outputs; stopping early aborts it.

        Raises:
            InvalidRequestError, RequestRejectedError, EngineClosedError: on the first
                iteration, when the request cannot be added.
        """
        stream = await self.add_request(prompt, params, request_id=request_id,
                                        priority=priority, cache_salt=cache_salt)
        try:
            async for out in stream:
                yield out
        finally:
            await stream.aclose()

    def abort(self, request_id: str) -> None:
        """Abort a request before the next step; its stream ends with finish_reason "abort".

        Safe to call from any thread and from ``finally`` blocks; unknown ids are ignored.
        """
        with self._aborts_lock:
            self._pending_aborts.append(request_id)
        self._kick()

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run ``fn(engine)`` on the worker thread, between steps (e.g. to read stats)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self.engine)

    async def stats(self) -> dict[str, Any]:
        """`Engine.stats()`, read between steps."""
        return await self.call(lambda e: e.stats())

    # -- facts fixed at start (read from any thread) ------------------------------------------
    @property
    def max_model_len(self) -> int:
        return self.engine.scheduler.config.max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self.engine.scheduler.config.max_num_seqs

    @property
    def vocab_size(self) -> int:
        return self.engine.manifest.vocab_size

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        """What a request leaves out (`Engine.sampling_defaults`)."""
        return self.engine.sampling_defaults

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return tuple(self.engine.eos_token_ids)

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (None without one); decode-only use outside the engine."""
        return self.engine.tokenizer

    @property
    def num_streams(self) -> int:
        """Requests whose outputs someone is still consuming."""
        return len(self._streams)

    @property
    def is_running(self) -> bool:
        return not self._closed and self.error is None

    # -- shutdown -------------------------------------------------------------------------
    async def shutdown(self, drain_timeout: float = 0.0) -> None:
        """Stop taking requests; let in-flight ones finish for up to ``drain_timeout``
        seconds, then abort the rest (their streams end with finish_reason "abort")."""
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while self._streams and loop.time() < deadline and self.error is None:
            await asyncio.sleep(0.01)
        for request_id in list(self._streams):
            self.abort(request_id)
        await self.call(lambda e: e.has_unfinished())  # waits for queued work
        if self._driver is not None:
            self._kick()
            # Until the aborts' outputs are in their streams: the engine may be empty while
            # the driver still holds the outputs of the step that emptied it.
            while self._has_work() or self._stepping:
                if self._driver.done():
                    break
                await asyncio.sleep(0.01)
            self._driver.cancel()
            try:
                await self._driver
            except (asyncio.CancelledError, Exception):
                pass
        self._executor.shutdown(wait=True)

    # -- the driver -----------------------------------------------------------------------
    def _kick(self) -> None:
        """Start the driver if needed and wake it (thread-safe for `abort`)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # another thread: the driver's loop picks the abort up when it wakes
            if self._driver is not None:
                self._driver.get_loop().call_soon_threadsafe(self._wake)
            return
        if self._driver is None or (self._driver.done() and self.error is None):
            self._wakeup = asyncio.Event()
            self._driver = loop.create_task(self._drive(), name="trtkv-engine-driver")
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _has_work(self) -> bool:
        return self.engine.has_unfinished() or bool(self._pending_aborts)

    async def _drive(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._has_work():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._stepping = True
            try:
                outputs = await loop.run_in_executor(self._executor, self._step)
            except Exception as exc:  # a failed step leaves the engine unusable
                self._stepping = False
                self._fail(exc)
                return
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is not None:
                    stream.put(out)
            self._stepping = False

    def _step(self) -> list[RequestOutput]:
        """Worker thread: apply queued aborts, then one engine step."""
        with self._aborts_lock:
            aborts, self._pending_aborts = self._pending_aborts, []
        outputs = [out for rid in aborts if (out := self.engine.abort(rid)) is not None]
        if self.engine.has_unfinished():
            outputs.extend(self.engine.step())
        return outputs

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        failure = EngineClosedError(f"the engine failed and stopped: {exc!r}; restart the server")
        failure.__cause__ = exc
        for stream in list(self._streams.values()):
            stream.put(failure)

"""Run the OpenAI server: build the engine, listen, stop gracefully on a signal or an event.

Owns the process-level lifecycle (engine creation, listening socket, shutdown order):
stop listening -> let in-flight requests finish for ``drain_timeout_s`` -> abort the rest
(their streams end with an error event and ``[DONE]``) -> close connections. HTTP is uvicorn's
(h11), with its malformed-request replies in OpenAI's JSON error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from trtkv.errors import ConfigError
from trtkv.runtime.async_engine import AsyncEngine
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.serving.app import OpenAIServer
from trtkv.serving.config import ServerConfig


def create_server(model_dir: str | Path, engine_config: EngineConfig,
                  config: ServerConfig) -> OpenAIServer:
    """An `OpenAIServer` over a fresh engine for ``model_dir``."""
    engine = Engine(model_dir, engine_config)
    name = config.served_model_name or Path(model_dir).resolve().name
    return OpenAIServer(AsyncEngine(engine), config, name)


class _JsonErrorsH11(H11Protocol):
    """uvicorn's h11 protocol, but a request it cannot parse gets OpenAI's JSON error body
    (uvicorn's own is text/plain)."""

    def send_400_response(self, msg: str) -> None:
        import h11

        body = json.dumps({"error": {"message": f"malformed HTTP request: {msg}", "type": "invalid_request_error",
                                     "param": None, "code": "bad_http_request"}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its signal handling: `run_server` owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:  # a bad --host, a busy or privileged --port
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {host}:{port} ({reason}); check --host and --port "
                          "(is another server on that port?)") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def run_server(server: OpenAIServer, *, stop: asyncio.Event | None = None,
                     on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None), then shut down.

    Args:
        server: what to serve.
        stop: an event that ends serving; None installs signal handlers instead.
        on_ready: called with the bound port once listening (useful with ``port=0``).
    """
    config = server.config
    sock = _listen(config.host, config.port)
    web = _Uvicorn(uvicorn.Config(
        server.create_app(), http=_JsonErrorsH11, lifespan="off", access_log=False, log_level="warning",
        timeout_keep_alive=5, timeout_graceful_shutdown=int(config.drain_timeout_s) + 5,
        h11_max_incomplete_event_size=64 * 1024,
    ))
    serving = asyncio.create_task(web.serve(sockets=[sock]), name="trtkv-http")
    while not web.started:
        if serving.done():
            await serving  # raises what stopped it
            return
        await asyncio.sleep(0.01)
    if on_ready is not None:
        on_ready(sock.getsockname()[1])
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("trtkv serve: shutting down (draining in-flight requests)", file=sys.stderr, flush=True)
        for listener in web.servers:  # no new connections; open ones keep going
            listener.close()
        await server.engine.shutdown(config.drain_timeout_s)  # in-flight streams end
        web.should_exit = True
        await serving

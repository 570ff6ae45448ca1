"""Run the OpenAI server: build the engine, listen, stop gracefully on a signal or an event.

Owns the process-level lifecycle (engine creation, listening socket, shutdown order):
stop listening -> let in-flight requests finish for ``drain_timeout_s`` -> abort the rest ->
close connections.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

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


async def run_server(server: OpenAIServer, *, stop: asyncio.Event | None = None,
                     on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when ``stop`` is None), then shut down.

    Args:
        server: what to serve.
        stop: an event that ends serving; None installs signal handlers instead.
        on_ready: called with the bound port once listening (useful with ``port=0``).
    """
    config = server.config
    # lingering_time: after an early error reply (408, 413) read and drop the client's late
    # body for at most 1 s, then close (aiohttp's default, 10 s, lets a slow client hold it).
    runner = web.AppRunner(server.create_app(), handler_cancellation=True,
                           shutdown_timeout=config.drain_timeout_s + 5.0, access_log=None,
                           lingering_time=1.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    try:
        await site.start()
    except OSError as exc:  # a bad --host, a busy or privileged --port
        await runner.cleanup()
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen on {config.host}:{config.port} ({reason}); check --host and --port "
                          "(is another server on that port?)") from None
    port = runner.addresses[0][1]
    if on_ready is not None:
        on_ready(port)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        print("trtkv serve: shutting down (draining in-flight requests)", file=sys.stderr, flush=True)
        await runner.cleanup()  # stops listening, runs on_shutdown (drain/abort), closes

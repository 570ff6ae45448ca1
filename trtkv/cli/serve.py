"""`trtkv serve MODEL`: the OpenAI-compatible HTTP server."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from trtkv.cli import app
from trtkv.cli._args import Model
from trtkv.cli._options import command
from trtkv.runtime.config import EngineConfig
from trtkv.serving.config import ServerConfig


@command(app, "serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, "
         "/metrics)", rich_help_panel="Serve")
def serve(model: Model, server_config: ServerConfig, engine: EngineConfig) -> None:
    from trtkv._optional import require

    require("fastapi", "serve", "trtkv serve")
    require("uvicorn", "serve", "trtkv serve")
    require("prometheus_client", "serve", "trtkv serve")
    from trtkv.model_source import model_name, resolve_model
    from trtkv.serving.server import create_server, run_server

    model_dir = resolve_model(model)
    if model_dir != Path(model) and not server_config.served_model_name:
        server_config = dataclasses.replace(server_config, served_model_name=model_name(model))
    server = create_server(model_dir, engine, server_config)

    def ready(port: int) -> None:
        print(f"trtkv serve: model {server.model_name!r} on http://{server_config.host}:{port}/v1",
              file=sys.stderr, flush=True)

    import asyncio

    asyncio.run(run_server(server, on_ready=ready))

"""`trtkv serve`: registered into the main CLI by `trtkv.cli` (it calls `register`)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    from trtkv.cli import add_dataclass_options
    from trtkv.model_source import MODEL_HELP
    from trtkv.runtime.config import EngineConfig
    from trtkv.serving.config import ServerConfig

    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, "
                              "/v1/chat/completions, /metrics)")
    p.add_argument("model_dir", help=MODEL_HELP)
    add_dataclass_options(p, ServerConfig)
    add_dataclass_options(p, EngineConfig)
    p.set_defaults(func=_cmd_serve)

    p = subparsers.add_parser("triton-repo", help="write a Triton Inference Server model "
                              "repository (Python backend, decoupled streaming)")
    p.add_argument("model_dir", help="exported model directory (trtkv export -o ...)")
    p.add_argument("-o", "--output", required=True, help="repository directory to write")
    p.add_argument("--model-name", default="trtkv", help="model name inside the repository")
    add_dataclass_options(p, EngineConfig)
    p.set_defaults(func=_cmd_triton_repo)


def _cmd_serve(args: argparse.Namespace) -> int:
    from trtkv._optional import require

    require("aiohttp", "serve", "trtkv serve")
    require("prometheus_client", "serve", "trtkv serve")
    from trtkv.cli import dataclass_from_args
    from trtkv.model_source import model_name, resolve_model
    from trtkv.runtime.config import EngineConfig
    from trtkv.serving.config import ServerConfig
    from trtkv.serving.server import create_server, run_server

    config: ServerConfig = dataclass_from_args(ServerConfig, args)
    model_dir = resolve_model(args.model_dir)
    if model_dir != Path(args.model_dir) and not config.served_model_name:
        config = dataclasses.replace(config, served_model_name=model_name(args.model_dir))
    server = create_server(model_dir, dataclass_from_args(EngineConfig, args), config)

    def ready(port: int) -> None:
        print(f"trtkv serve: model {server.model_name!r} on http://{config.host}:{port}/v1",
              file=sys.stderr, flush=True)

    asyncio.run(run_server(server, on_ready=ready))
    return 0


def _cmd_triton_repo(args: argparse.Namespace) -> int:
    from trtkv.cli import dataclass_from_args
    from trtkv.runtime.config import EngineConfig
    from trtkv.serving.triton import write_triton_repo

    folder = write_triton_repo(args.model_dir, args.output,
                               dataclass_from_args(EngineConfig, args), args.model_name)
    print(f"wrote {folder}; run: tritonserver --model-repository {args.output}", file=sys.stderr)
    return 0

"""Serving fixtures: a live server over `chat_model_dir` (an exported model with a tokenizer
and a chat template, from tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trtkv.runtime.config import EngineConfig
from trtkv.serving.app import OpenAIServer
from trtkv.serving.config import ServerConfig
from trtkv.serving.server import create_server, run_server

API_KEY = "sk-test-123"
MODEL_NAME = "tiny"


@dataclass
class LiveServer:
    server: OpenAIServer
    port: int
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict:
        return asyncio.run_coroutine_threadsafe(self.server.engine.stats(), self.loop).result(10)

    def shutdown(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def start_server(model_dir: Path, engine_config: EngineConfig, config: ServerConfig) -> LiveServer:
    """Serve in a background thread with its own event loop; returns once listening."""
    server = create_server(model_dir, engine_config, config)
    ready = threading.Event()
    box: dict = {}

    def main() -> None:
        async def run() -> None:
            box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
            await run_server(server, stop=box["stop"],
                             on_ready=lambda port: (box.update(port=port), ready.set()))
        asyncio.run(run())

    thread = threading.Thread(target=main, name="trtkv-test-server", daemon=True)
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("the test server did not start within 60 s")
    return LiveServer(server, box["port"], box["loop"], box["stop"], thread)


def context_len(model_dir: Path, cap: int = 256) -> int:
    """A max_model_len of at most ``cap`` that the model supports."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    return min(cap, int(manifest.get("max_position_embeddings", cap)))


@pytest.fixture(scope="module")
def live_server(chat_model_dir: Path) -> Iterator[LiveServer]:
    live = start_server(
        chat_model_dir,
        EngineConfig(num_blocks=256, num_threads=1, max_num_seqs=64,
                     max_model_len=context_len(chat_model_dir),
                     max_num_queued_requests=256),
        ServerConfig(port=0, served_model_name=MODEL_NAME, api_key=API_KEY,
                     max_request_bytes=64 * 1024, drain_timeout_s=1.0),
    )
    yield live
    live.shutdown()


@pytest.fixture(scope="module")
def client(live_server: LiveServer):
    """The official openai client on the live server."""
    import openai

    return openai.OpenAI(base_url=live_server.base_url + "/v1", api_key=API_KEY, max_retries=0)


def http(base_url: str, method: str, path: str, body: object = None, *, raw: bytes | None = None,
         api_key: str | None = API_KEY) -> tuple[int, dict, dict | str]:
    """One plain HTTP request; returns (status, headers, JSON body or text)."""
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base_url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            status, hdrs, text = resp.status, resp.headers, resp.read().decode()  # case-insensitive
    except urllib.error.HTTPError as exc:
        status, hdrs, text = exc.code, exc.headers, exc.read().decode()
    try:
        return status, hdrs, json.loads(text)
    except ValueError:
        return status, hdrs, text

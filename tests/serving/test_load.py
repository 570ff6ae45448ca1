"""Bounded load: 64 concurrent streaming clients, a quarter hanging up early; then no leaked
KV block and /metrics that tells what happened. Plus back-pressure (429) and drain on shutdown."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.serving.conftest import API_KEY, MODEL_NAME, LiveServer, context_len, start_server
from trtkv.runtime.config import EngineConfig
from trtkv.serving.config import ServerConfig

NUM_CLIENTS = 64
HEADERS = {"Authorization": f"Bearer {API_KEY}"}


async def _client(session: aiohttp.ClientSession, url: str, i: int, hang_up: bool) -> dict:
    body = {"model": MODEL_NAME, "prompt": [3 + i % 50, 4, 5, 6 + i % 7], "stream": True,
            "max_tokens": 200 if hang_up else 12, "temperature": 0.8, "seed": i,
            "ignore_eos": True}
    text, num_chunks, finish, done = "", 0, None, False
    async with session.post(url, json=body, headers=HEADERS) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            if line.strip() == b"data: [DONE]":
                done = True
                break
            choice = json.loads(line[6:])["choices"][0]
            text += choice["text"]
            finish = choice["finish_reason"] or finish
            num_chunks += 1
            if hang_up and num_chunks == 2:
                resp.close()  # drop the connection mid-stream
                return {"hung_up": True}
    return {"hung_up": False, "finish": finish, "done": done, "chunks": num_chunks}


def _metric(page: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" (\S+)"
    match = re.search("^" + pattern + "$", page, re.M)
    assert match, f"{name}{labels} missing from /metrics"
    return float(match.group(1))


@pytest.fixture(scope="module")
def load_server(chat_model_dir: Path):
    live = start_server(
        chat_model_dir,
        EngineConfig(num_blocks=160, num_threads=1, max_num_seqs=32,
                     max_model_len=context_len(chat_model_dir)),
        ServerConfig(port=0, served_model_name=MODEL_NAME, api_key=API_KEY, drain_timeout_s=1.0),
    )
    yield live
    live.shutdown()


def test_64_streaming_clients_some_hanging_up(load_server: LiveServer) -> None:
    url = load_server.base_url + "/v1/completions"

    async def main() -> list[dict]:
        connector = aiohttp.TCPConnector(limit=NUM_CLIENTS)
        async with aiohttp.ClientSession(connector=connector) as session:
            jobs = [_client(session, url, i, hang_up=i % 4 == 3) for i in range(NUM_CLIENTS)]
            return await asyncio.wait_for(asyncio.gather(*jobs), timeout=120)

    results = asyncio.run(main())
    completed = [r for r in results if not r["hung_up"]]
    assert len(completed) == NUM_CLIENTS * 3 // 4
    assert all(r["done"] and r["finish"] == "length" and r["chunks"] == 12 for r in completed)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # aborts land between steps
        stats = load_server.stats()
        if stats["scheduler"]["kv"]["num_used"] == 0 and load_server.server.engine.num_streams == 0:
            break
        time.sleep(0.05)
    assert stats["scheduler"]["kv"]["num_used"] == 0, "KV blocks leaked"
    assert stats["scheduler"]["num_running"] == stats["scheduler"]["num_waiting"] == 0
    load_server.server.engine.engine.scheduler.check_integrity()

    with urllib.request.urlopen(load_server.base_url + "/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        page = resp.read().decode()
    hung_up = NUM_CLIENTS // 4
    assert _metric(page, "trtkv_kv_blocks_used") == 0
    assert _metric(page, "trtkv_kv_blocks_free") == 160
    assert _metric(page, "trtkv_requests_added_total") == NUM_CLIENTS
    assert _metric(page, "trtkv_sequences_finished_total", 'reason="length"') == NUM_CLIENTS - hung_up
    assert _metric(page, "trtkv_sequences_finished_total", 'reason="abort"') == hung_up
    assert _metric(page, "trtkv_client_disconnects_total") == hung_up
    assert _metric(page, "trtkv_generation_tokens_total") >= (NUM_CLIENTS - hung_up) * 12
    assert _metric(page, "trtkv_time_to_first_token_seconds_count") == NUM_CLIENTS
    assert _metric(page, "trtkv_time_to_first_token_seconds_bucket", 'le="+Inf"') == NUM_CLIENTS
    assert _metric(page, "trtkv_e2e_request_latency_seconds_count") == NUM_CLIENTS - hung_up
    assert _metric(page, "trtkv_http_requests_total",
                   'endpoint="/v1/completions",status="200"') == NUM_CLIENTS - hung_up
    assert _metric(page, "trtkv_active_streams") == 0
    assert "trtkv_preemptions_total" in page and "trtkv_requests_waiting" in page


def test_full_queue_is_429_and_shutdown_drains(chat_model_dir: Path) -> None:
    live = start_server(
        chat_model_dir,
        EngineConfig(num_blocks=64, num_threads=1, max_num_seqs=1, max_num_queued_requests=1),
        ServerConfig(port=0, served_model_name=MODEL_NAME, drain_timeout_s=5.0),
    )
    url = live.base_url + "/v1/completions"

    async def one(session: aiohttp.ClientSession) -> tuple[int, dict]:
        body = {"model": MODEL_NAME, "prompt": [5, 6, 7], "max_tokens": 64, "ignore_eos": True}
        async with session.post(url, json=body) as resp:
            return resp.status, await resp.json(), resp.headers.get("Retry-After")

    async def main() -> list:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(one(session) for _ in range(6)))

    replies = asyncio.run(main())
    statuses = sorted(status for status, _, _ in replies)
    assert 200 in statuses and 429 in statuses, statuses
    rejected = [(body, retry) for status, body, retry in replies if status == 429]
    assert all(b["error"]["code"] == "queue_full" and retry for b, retry in rejected)
    assert all(b["choices"][0]["finish_reason"] == "length" for s, b, _ in replies if s == 200)

    # Graceful shutdown: a stream in flight when the stop comes still finishes (drain),
    # and the server stops taking connections.
    async def in_flight_then_stop() -> tuple[str | None, bool, int]:
        body = {"model": MODEL_NAME, "prompt": [5, 6, 7], "max_tokens": 100, "ignore_eos": True,
                "stream": True}
        finish, done, num_chunks = None, False, 0
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
            async for line in resp.content:
                if line.strip() == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: "):
                    num_chunks += 1
                    finish = json.loads(line[6:])["choices"][0]["finish_reason"] or finish
                    if num_chunks == 1:
                        live.loop.call_soon_threadsafe(live.stop.set)
        return finish, done, num_chunks

    finish, done, num_chunks = asyncio.run(in_flight_then_stop())
    live.thread.join(30)
    assert not live.thread.is_alive()
    assert (finish, done, num_chunks) == ("length", True, 100)
    assert live.server.engine.engine.stats()["scheduler"]["kv"]["num_used"] == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(live.base_url + "/health", timeout=5)

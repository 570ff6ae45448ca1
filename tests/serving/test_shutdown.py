"""Shutting the server down with requests in flight: every stream ends with an error event
and ``data: [DONE]`` (never cut, never finish_reason "abort", which OpenAI does not define);
a request that was not streamed gets a 503; nothing leaks."""

from __future__ import annotations

import json
import socket
import threading
import time

from tests.serving.conftest import API_KEY, MODEL_NAME, context_len, start_server
from trtkv.runtime.config import EngineConfig
from trtkv.serving.config import ServerConfig


def _post(port: int, path: str, body: dict) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(data)}\r\n"
                 "Connection: close\r\n\r\n".encode() + data)
    return sock


def _read_all(sock: socket.socket, first: threading.Event) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
        if b"data: {" in b"".join(chunks):
            first.set()
    sock.close()
    return b"".join(chunks)


def test_shutdown_mid_stream_ends_every_stream_cleanly(chat_model_dir) -> None:
    for _ in range(3):  # the race this guards against was intermittent
        live = start_server(chat_model_dir, EngineConfig(num_blocks=256, num_threads=1, max_num_seqs=16,
                                                         max_model_len=context_len(chat_model_dir)),
                            ServerConfig(port=0, served_model_name=MODEL_NAME, api_key=API_KEY,
                                         drain_timeout_s=0.0))
        body = {"model": MODEL_NAME, "prompt": "def main():", "max_tokens": 200, "ignore_eos": True}
        replies: list[bytes] = [b""] * 7
        started = [threading.Event() for _ in replies]
        threads = []
        for i in range(len(replies)):
            streamed = i < 6  # six streams and one plain request
            sock = _post(live.port, "/v1/completions", {**body, "stream": streamed})
            if not streamed:
                started[i].set()

            def reader(i: int, sock: socket.socket, replies: list[bytes], started: list[threading.Event]) -> None:
                replies[i] = _read_all(sock, started[i])

            threads.append(threading.Thread(target=reader, args=(i, sock, replies, started), daemon=True))
            threads[-1].start()
        for event in started:
            assert event.wait(30)
        time.sleep(0.05)
        engine = live.server.engine.engine
        live.shutdown()
        for t in threads:
            t.join(30)
        for reply in replies[:6]:
            head, _, sse = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), reply[:300]
            events = [e for e in sse.split(b"\n\n") if b"data: " in e]
            assert events and events[-1].strip().endswith(b"data: [DONE]"), sse[-400:]
            error = json.loads(events[-2].split(b"data: ", 1)[1])
            assert error["error"]["code"] == "shutting_down", error
            assert b'"finish_reason": "abort"' not in sse and b'"finish_reason":"abort"' not in sse
        plain = replies[6]
        assert plain.startswith(b"HTTP/1.1 503"), plain[:300]
        assert b"shutting_down" in plain
        assert not engine.has_unfinished() and engine.kv.usage().num_used == 0

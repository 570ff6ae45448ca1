"""Two `trtkv serve` replicas sharing one Redis KV tier, as processes on loopback (the topology
of deploy/compose.yaml): a prefix computed by one replica is served from the store by the other
(cached prompt tokens reported in usage), with the same greedy tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import _free_port


def _post(port: int, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def _start(model_dir: Path, redis_url: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trtkv", "serve", str(model_dir), "--port", str(port), "--served-model-name", "tiny",
         "--num-blocks", "64", "--num-threads", "1", "--enable-prefix-caching", "--kv-store-url", redis_url],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("replica did not start:\n" + log.read_text()[-2000:])


@pytest.mark.slow
def test_replicas_share_prefixes_through_redis(redis_url, exported_factory, tmp_path: Path) -> None:
    import redis

    url, _ = redis_url
    model_dir = exported_factory("llama")
    prompt = [int(t) for t in (list(range(3, 300, 3)) * 2)[:150]]  # 150 tokens: 9 full blocks of 16
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    a, port_a = _start(model_dir, url, tmp_path / "a.log")
    b, port_b = _start(model_dir, url, tmp_path / "b.log")
    try:
        first = _post(port_a, body)
        assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 30  # replica A publishes in the background
        while len([k for k in client.keys("trtkv:kv:*") if client.type(k) == b"string"]) < 9:
            assert time.monotonic() < deadline, "replica A published no blocks"
            time.sleep(0.1)
        second = _post(port_b, body)
        assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 144  # 9 blocks from the store
        assert second["choices"][0]["text"] == first["choices"][0]["text"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port_b}/metrics", timeout=30) as resp:
            metrics = resp.read().decode()
        hits = [line for line in metrics.splitlines() if line.startswith("trtkv_kv_store_fetch_hit_blocks")]
        assert hits and float(hits[0].split()[-1]) >= 9, hits
    finally:
        for proc in (a, b):
            proc.terminate()
        for proc in (a, b):
            proc.wait(30)

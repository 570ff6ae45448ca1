"""The shared KV store tier on a real redis-server (started here on a free loopback port).

Two engine processes share prefixes through Redis with identical tokens; a store that stops
or hangs mid-run never fails a request; blocks of another model, KV dtype or scales are
never used. Skips only when the redis-server binary is absent (scripts/setup.sh installs it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REDIS
from tests.runtime.test_prefix_engine import run_one_by_one, shared_prefix_prompts
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.tiers import BlockFormat, RedisKVStore

pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed "
                                "(scripts/setup.sh installs it from Debian packages)")
ROOT = Path(__file__).resolve().parents[3]


def _fmt(**kw) -> BlockFormat:
    base = dict(fingerprint="f" * 24, kv_dtype="fp32", storage_dtype="float32",
                shape=(2, 2, 4, 1, 8), k_scales=((1.0,), (1.0,)), v_scales=((1.0,), (1.0,)))
    return BlockFormat(**{**base, **kw})  # type: ignore[arg-type]


def test_codec_refuses_other_formats():
    fmt = _fmt()
    block = np.arange(np.prod(fmt.shape), dtype=np.float32).reshape(fmt.shape)
    payload = fmt.encode(b"k" * 16, block)
    np.testing.assert_array_equal(fmt.decode(b"k" * 16, payload), block)
    assert fmt.decode(b"x" * 16, payload) is None
    assert fmt.decode(b"k" * 16, payload[:-1]) is None
    for other in (_fmt(fingerprint="e" * 24), _fmt(k_scales=((0.5,), (1.0,))),
                  _fmt(v_scales=((1.0,), (2.0,))), _fmt(kv_dtype="fp16", storage_dtype="float16")):
        assert other.decode(b"k" * 16, payload) is None


def test_codec_detects_changed_bytes():
    fmt = _fmt()
    payload = fmt.encode(b"k" * 16, np.ones(fmt.shape, np.float32))
    flipped = bytearray(payload)
    flipped[-5] ^= 0x40  # one bit of the block data
    assert fmt.decode(b"k" * 16, bytes(flipped)) is None
    start = payload.index(b'"digest": "') + len(b'"digest": "')
    forged = payload[:start] + (b"0" if payload[start:start + 1] != b"0" else b"1") + payload[start + 1:]
    assert fmt.decode(b"k" * 16, forged) is None
    assert fmt.decode(b"k" * 16, payload.replace(b'"digest"', b'"digesT"')) is None


def test_poisoned_store_blocks_are_recomputed(redis_url, exported_factory, caplog):
    """Bytes overwritten in Redis: a miss with a warning, the same tokens as without the store."""
    import redis

    url, _ = redis_url
    model_dir = exported_factory("llama")
    prompts = shared_prefix_prompts(2, 2, 70, seed=7)
    first = _child(model_dir, url, prompts)
    client = redis.Redis.from_url(url)
    names = [n for n in client.keys("trtkv:kv:*") if client.type(n) == b"string"]  # blocks, not the index
    assert len(names) >= 8
    for name in names:  # flip a byte near the end of every block's data, in place
        size = client.strlen(name)
        byte = client.getrange(name, size - 3, size - 3)
        client.setrange(name, size - 3, bytes([byte[0] ^ 0x01]))
    second = _child(model_dir, url, prompts)
    assert second["kv"]["num_store_hit_blocks"] == 0 and second["store"]["fetch_rejected"] >= 1
    assert {k: v[0] for k, v in second["out"].items()} == {k: v[0] for k, v in first["out"].items()}
    fmt = _fmt()
    store = RedisKVStore(url, fmt)
    store.publish(b"p" * 16, np.ones(fmt.shape, np.float32))
    assert store.flush()
    name = store._name(b"p" * 16)
    client.setrange(name, client.strlen(name) - 1, b"\x7f")
    with caplog.at_level("WARNING", logger="trtkv.kv_store"):
        assert store.fetch([b"p" * 16]) == []
    assert "digest check" in caplog.text and store.counters["fetch_rejected"] == 1
    store.close()


def test_store_round_trip_bound_and_scale_mismatch(redis_url):
    url, _ = redis_url
    fmt = _fmt()
    store = RedisKVStore(url, fmt, max_blocks=3)
    blocks = [np.full(fmt.shape, i, np.float32) for i in range(5)]
    keys = [bytes([i]) * 16 for i in range(5)]
    for key, block in zip(keys[:2], blocks[:2], strict=True):
        store.publish(key, block)
    assert store.flush()
    got = store.fetch(keys)
    assert len(got) == 2 and all(np.array_equal(g, b) for g, b in zip(got, blocks, strict=False))
    # Same namespace, other scales in the header (as if the fingerprint missed them): no hit.
    other = RedisKVStore(url, _fmt(k_scales=((0.25,), (1.0,))))
    assert other.fetch(keys) == [] and other.counters["fetch_rejected"] == 1
    assert RedisKVStore(url, _fmt(fingerprint="0" * 24)).fetch(keys) == []
    for key, block in zip(keys[2:], blocks[2:], strict=True):
        store.publish(key, block)
    assert store.flush()
    assert store.fetch(keys[:2]) == []  # the oldest two were dropped to keep 3 blocks
    assert len(store.fetch(keys[2:])) == 3
    store.close()


CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams
engine = Engine({model!r}, EngineConfig(num_blocks=32, block_size=16, enable_prefix_caching=True,
                                        kv_store_url={url!r}, kv_dtype={kv!r}, allow_uncalibrated_kv=True))
out = {{}}
for i, p in enumerate({prompts!r}):
    rid = engine.add_request(p, SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True))
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                out[str(i)] = [list(o.outputs[0].token_ids), o.num_cached_tokens]
engine.close()
print(json.dumps({{"out": out, "kv": engine.stats()["scheduler"]["kv"], "store": engine.stats()["kv_store"]}}))
"""


def _child(model_dir: Path, url: str, prompts: list[list[int]], kv: str = "auto") -> dict:
    code = CHILD.format(root=str(ROOT), model=str(model_dir), url=url, prompts=prompts, kv=kv)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_two_processes_share_prefixes_through_redis(redis_url, exported_factory):
    url, _ = redis_url
    model_dir = exported_factory("llama")
    prompts = shared_prefix_prompts(2, 2, 70, seed=7)
    first = _child(model_dir, url, prompts)
    assert first["store"]["published_blocks"] >= 8 and first["kv"]["num_store_hit_blocks"] == 0
    second = _child(model_dir, url, prompts)
    assert second["out"] == {k: [v[0], 64] for k, v in first["out"].items()}
    assert second["kv"]["num_store_hit_blocks"] == 8
    # Another KV dtype (other bytes and scales): never a hit, and it still runs.
    fp8 = _child(model_dir, url, prompts, kv="fp8")
    assert fp8["kv"]["num_store_hit_blocks"] == 0 and fp8["store"]["fetch_rejected"] == 0
    assert all(v[1] == 0 for v in fp8["out"].values())


def test_redis_stopped_or_hung_mid_run_never_fails_a_request(redis_url, exported_factory):
    url, proc = redis_url
    model_dir = exported_factory("llama")
    prompts = shared_prefix_prompts(3, 3, 40, seed=8) + shared_prefix_prompts(6, 6, 40, seed=9)
    reference = run_one_by_one(Engine(model_dir, EngineConfig(num_blocks=32, block_size=16)), prompts)
    engine = Engine(model_dir, EngineConfig(num_blocks=32, block_size=16, enable_prefix_caching=True,
                                            kv_store_url=url, kv_store_timeout_s=0.1))
    got = run_one_by_one(engine, prompts[:3])
    os.kill(proc.pid, signal.SIGSTOP)  # hung: every call times out
    start = time.monotonic()
    got += run_one_by_one(engine, prompts[3:6])
    assert time.monotonic() - start < 5
    assert engine.stats()["kv_store"]["errors"] >= 1
    os.kill(proc.pid, signal.SIGKILL)  # gone
    proc.wait(5)
    engine.tiers.store.retry_after_s = 0.0  # type: ignore[union-attr]
    got += run_one_by_one(engine, prompts[6:])
    assert [t for t, _ in got] == [t for t, _ in reference]
    assert engine.stats()["kv_store"]["errors"] >= 2
    engine.close()


def test_store_lookups_run_off_the_engine_thread(redis_url, exported_factory):
    """`schedule()` makes no network call: each request's lookup runs on the prefetch thread
    while the engine keeps stepping the others, and a slow store delays only its request."""
    import threading

    from trtkv.runtime.sampling import SamplingParams

    url, _ = redis_url
    model_dir = exported_factory("llama")
    prompts = shared_prefix_prompts(2, 2, 70, seed=7)
    _child(model_dir, url, prompts)  # publishes the prefixes
    engine = Engine(model_dir, EngineConfig(num_blocks=32, block_size=16, enable_prefix_caching=True,
                                            kv_store_url=url))
    store = engine.tiers.store
    assert store is not None
    calls: list[str] = []
    real_fetch = store.fetch

    def slow_fetch(keys):
        calls.append(threading.current_thread().name)
        time.sleep(0.3)
        return real_fetch(keys)

    store.fetch = slow_fetch  # type: ignore[method-assign]
    params = SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True)
    local = engine.add_request([7, 8, 9], params)  # too short for a full block: no lookup
    shared = engine.add_request(prompts[0], params)
    finished_at: dict[str, int] = {}
    step = 0
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finished_at[out.request_id] = step
        step += 1
    engine.close()
    assert calls == ["trtkv-kv-prefetch"]
    assert finished_at[local] < finished_at[shared], "the short request ran while the lookup did"
    assert engine.stats()["scheduler"]["kv"]["num_store_hit_blocks"] == 4

"""Prefix caching end to end on ONNX Runtime: greedy tokens equal with caching on and off.

Every family, a pool small enough that cached blocks get evicted, quantized (fp8) pools,
cache salts that separate tenants, and the metrics `Engine.stats()` reports.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ALL_FAMILIES
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, max_new_tokens=5, ignore_eos=True)


def shared_prefix_prompts(num: int, num_prefixes: int, prefix_len: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    prefixes = [[int(t) for t in rng.integers(3, 320, prefix_len)] for _ in range(num_prefixes)]
    return [prefixes[i % num_prefixes] + [int(t) for t in rng.integers(3, 320, 1 + i % 7)]
            for i in range(num)]


def run_one_by_one(engine: Engine, prompts: list[list[int]], salts: list[str | None] | None = None,
                   params: SamplingParams = GREEDY) -> list[tuple[tuple[int, ...], int]]:
    """Each prompt runs to the end before the next is added; (tokens, num_cached_tokens)."""
    results = []
    for i, prompt in enumerate(prompts):
        rid = engine.add_request(prompt, params, cache_salt=salts[i] if salts else None)
        final = None
        while engine.has_unfinished():
            for out in engine.step():
                if out.request_id == rid and out.finished:
                    final = out
            engine.kv.check_integrity()
        assert final is not None
        results.append((final.outputs[0].token_ids, final.num_cached_tokens))
    return results


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_greedy_equal_with_caching_on_and_off_after_evictions(family, exported_factory):
    model_dir = exported_factory(family)
    prompts = shared_prefix_prompts(10, 3, 40, seed=1)
    off = run_one_by_one(Engine(model_dir, EngineConfig(num_blocks=8, block_size=16)), prompts)
    engine = Engine(model_dir, EngineConfig(num_blocks=8, block_size=16, enable_prefix_caching=True))
    on = run_one_by_one(engine, prompts)
    assert [t for t, _ in on] == [t for t, _ in off]
    assert all(c == 0 for _, c in off)
    stats = engine.stats()["scheduler"]
    assert stats["num_prefix_hit_tokens"] == sum(c for _, c in on) > 0
    assert stats["kv"]["num_evictions"] > 0, "the pool was meant to evict cached blocks"
    assert stats["kv"]["num_used"] == 0


def test_batched_and_fp8_pool_equal_with_caching(exported_factory):
    model_dir = exported_factory("llama")
    prompts = shared_prefix_prompts(12, 2, 48, seed=2)
    for kv_dtype in ("auto", "fp8"):
        outs = {}
        for caching in (False, True):
            engine = Engine(model_dir, EngineConfig(kv_dtype=kv_dtype, num_blocks=24, block_size=16,
                                                    max_num_batched_tokens=64, max_num_seqs=4,
                                                    enable_prefix_caching=caching, allow_uncalibrated_kv=True))
            ids = [engine.add_request(p, GREEDY) for p in prompts[:2]]
            while engine.has_unfinished():  # the first two publish the prefixes
                engine.step()
            ids += [engine.add_request(p, GREEDY) for p in prompts[2:]]
            final = {}
            while engine.has_unfinished():
                final.update({o.request_id: o for o in engine.step() if o.finished})
                engine.kv.check_integrity()
            outs[caching] = [final[i].outputs[0].token_ids for i in ids[2:]]
            if caching:
                assert min(final[i].num_cached_tokens for i in ids[2:]) >= 32
        assert outs[True] == outs[False], kv_dtype


def test_cache_salt_separates_tenants_and_metrics(exported_factory):
    engine = Engine(exported_factory("qwen2"), EngineConfig(num_blocks=32, block_size=16,
                                                            enable_prefix_caching=True))
    prompt = shared_prefix_prompts(1, 1, 50)[0]
    res = run_one_by_one(engine, [prompt, prompt, prompt, prompt], ["a", "a", "b", None])
    assert [c for _, c in res] == [0, 48, 0, 0]
    assert len({t for t, _ in res}) == 1
    snap = engine.stats()["scheduler"]
    assert snap["num_prefix_queries"] == 4
    assert snap["num_prefix_query_tokens"] == 4 * len(prompt)
    assert snap["num_prefix_hit_tokens"] == 48
    assert snap["prefix_hit_rate"] == pytest.approx(48 / (4 * len(prompt)))
    assert "num_evictions" in snap["kv"]


@pytest.mark.parametrize("policy", ["ttl", "cost"])
def test_every_eviction_policy_keeps_greedy_output_and_reports_itself(policy, exported_factory):
    """Under eviction pressure each policy serves the same tokens as no caching; its
    evictions, hits and their ages are in the stats and on /metrics' source."""
    model_dir = exported_factory("llama")
    prompts = shared_prefix_prompts(10, 3, 40, seed=1)
    off = run_one_by_one(Engine(model_dir, EngineConfig(num_blocks=8, block_size=16)), prompts)
    extra = {"prefix_ttl_s": 3600.0} if policy == "ttl" else {}
    engine = Engine(model_dir, EngineConfig(num_blocks=8, block_size=16, enable_prefix_caching=True,
                                            prefix_eviction=policy, **extra))
    on = run_one_by_one(engine, prompts)
    assert [t for t, _ in on] == [t for t, _ in off]
    kv = engine.stats()["scheduler"]["kv"]
    assert kv["eviction_policy"] == policy and kv["evictions_by_reason"]["capacity"] == kv["num_evictions"] > 0
    assert kv["num_hit_blocks"] * 16 == sum(c for _, c in on) > 0
    assert kv["evicted_age_s"] >= 0.0 and kv["num_used"] == 0

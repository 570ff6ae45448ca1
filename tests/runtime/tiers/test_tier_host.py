"""The host-memory offload tier end to end on ONNX Runtime: blocks evicted from a device pool
too small for the workload come back from host memory, with the same greedy tokens."""

from __future__ import annotations

import pytest

from tests.runtime.test_prefix_engine import GREEDY, run_one_by_one, shared_prefix_prompts
from trtkv.errors import ConfigError
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine


@pytest.mark.parametrize("kv_dtype", ["auto", "int8"])
def test_host_tier_hits_with_identical_outputs(kv_dtype, exported_factory):
    model_dir = exported_factory("llama")
    prompts = shared_prefix_prompts(12, 4, 64, seed=3)  # 4 prefixes x 4 blocks > 12 blocks
    base = dict(kv_dtype=kv_dtype, num_blocks=12, block_size=16, max_num_seqs=2, allow_uncalibrated_kv=True)
    off = run_one_by_one(Engine(model_dir, EngineConfig(**base)), prompts)
    device_only = Engine(model_dir, EngineConfig(**base, enable_prefix_caching=True))
    run_one_by_one(device_only, prompts)
    engine = Engine(model_dir, EngineConfig(**base, enable_prefix_caching=True, kv_offload_blocks=24))
    on = run_one_by_one(engine, prompts)
    assert [t for t, _ in on] == [t for t, _ in off]
    kv = engine.stats()["scheduler"]["kv"]
    assert kv["num_offloaded"] > 0 and kv["num_host_hit_blocks"] > 0
    hit_tokens = engine.stats()["scheduler"]["num_prefix_hit_tokens"]
    assert hit_tokens > device_only.stats()["scheduler"]["num_prefix_hit_tokens"]
    assert [c for _, c in on][4:] == [64] * 8


def test_preempted_blocks_come_back_from_host(exported_factory):
    model_dir = exported_factory("qwen3")
    prompts = shared_prefix_prompts(6, 6, 70, seed=4)
    params = GREEDY.__class__(temperature=0, max_new_tokens=20, ignore_eos=True)
    outs = []
    for extra in ({}, dict(enable_prefix_caching=True, kv_offload_gib=0.001)):
        engine = Engine(model_dir, EngineConfig(num_blocks=14, block_size=16, max_num_seqs=6,
                                                max_num_batched_tokens=64, **extra))
        ids = [engine.add_request(p, params) for p in prompts]
        final = {}
        while engine.has_unfinished():
            final.update({o.request_id: o for o in engine.step() if o.finished})
            engine.kv.check_integrity()
        outs.append([final[i].outputs[0].token_ids for i in ids])
        stats = engine.stats()["scheduler"]
        assert stats["num_preemptions"] > 0
    assert outs[0] == outs[1]
    assert stats["kv"]["num_offload_total"] > 0 and stats["num_prefix_hit_tokens"] > 0


def test_tiers_need_prefix_caching():
    with pytest.raises(ConfigError, match="enable-prefix-caching"):
        EngineConfig(kv_offload_gib=1.0)
    with pytest.raises(ConfigError, match="enable-prefix-caching"):
        EngineConfig(kv_store_url="redis://127.0.0.1:6379/0")

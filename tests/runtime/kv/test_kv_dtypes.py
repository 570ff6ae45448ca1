"""Quantized and half-precision KV pools: memory per token, capacity, and engine behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from trtkv.manifest import Manifest
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams


def test_kv_bytes_per_token_and_capacity(exported_factory):
    model_dir = exported_factory("llama")
    m = Manifest.load(model_dir)
    per_elem = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
    measured = {}
    for kv, size in per_elem.items():
        engine = Engine(model_dir, EngineConfig(kv_dtype=kv, kv_cache_gib=0.01, block_size=16, allow_uncalibrated_kv=True))
        pools = engine.backend.pools  # type: ignore[attr-defined]
        nbytes = sum(p.nbytes for p in pools)
        tokens = engine.backend.num_blocks * engine.backend.block_size
        measured[kv] = nbytes / tokens
        assert measured[kv] == 2 * m.num_layers * m.num_kv_heads * m.head_dim * size
        assert engine.backend.manifest.kv_bytes_per_token() == measured[kv]
    assert measured["fp8"] == measured["int8"] == measured["fp16"] / 2
    # A fixed-memory pool admits twice the sequences with an 8-bit KV cache.
    def admitted(kv: str) -> int:
        fp16_block = 16 * m.kv_bytes_per_token() // 2  # fp32 export: halve for fp16
        engine = Engine(model_dir, EngineConfig(kv_dtype=kv, kv_cache_gib=176 * fp16_block / 2**30, block_size=16, allow_uncalibrated_kv=True,
                                               max_num_seqs=256, max_num_batched_tokens=16384))
        for _ in range(200):
            engine.add_request(list(range(3, 3 + 60)), SamplingParams(max_new_tokens=4, temperature=0))
        plan = engine.scheduler.schedule()
        return len(plan.seqs)
    assert admitted("fp16") == 176 // 4  # 60-token prompts take 4 blocks of 16
    assert admitted("fp8") == 2 * admitted("fp16")


@pytest.mark.parametrize("kv", ["fp8", "int8"])
def test_quantized_pool_outputs_do_not_depend_on_chunking_or_preemption(kv, exported_factory):
    """Attention reads the stored codes for the step's own tokens too, so chunking a prompt
    or recomputing it after preemption reproduces the same quantized K/V exactly."""
    model_dir = exported_factory("llama")
    rng = np.random.default_rng(4)
    prompts = [[int(t) for t in rng.integers(3, 300, size=n)] for n in (7, 60, 150, 33, 90, 12)]
    params = SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True)

    def run(**kw):
        engine = Engine(model_dir, EngineConfig(kv_dtype=kv, block_size=8, allow_uncalibrated_kv=True, **kw))
        ids = [engine.add_request(p, params) for p in prompts]
        done = {}
        while engine.has_unfinished():
            done.update({o.request_id: o for o in engine.step() if o.finished})
            engine.kv.check_integrity()
        return [list(done[i].outputs[0].token_ids) for i in ids], engine.stats()["scheduler"]

    relaxed, _ = run(num_blocks=400, max_num_batched_tokens=2048)
    pressed, stats = run(num_blocks=36, max_num_batched_tokens=48, max_num_seqs=6)
    assert stats["num_preemptions"] > 0 and stats["num_chunked_prefills"] > 0
    assert pressed == relaxed


def test_uncalibrated_quantized_pools_are_refused(exported_factory, tmp_path):
    """fp8/int8 on the default scales saturates on real models: refused with how to calibrate,
    unless asked for; a calibrated export runs."""
    from trtkv.errors import ConfigError
    from trtkv.export.calibrate import calibrate
    from trtkv.export.exporter import ExportConfig, export
    from trtkv.models import DEFAULT_MODEL_DIR

    model_dir = exported_factory("llama")
    for kv in ("fp8", "int8"):
        with pytest.raises(ConfigError, match=f"the {kv} KV pool has no calibrated scales.*trtkv calibrate"):
            Engine(model_dir, EngineConfig(kv_dtype=kv))
        Engine(model_dir, EngineConfig(kv_dtype=kv, allow_uncalibrated_kv=True))
    out = tmp_path / "int8"
    export(DEFAULT_MODEL_DIR, out, ExportConfig(kv_dtype="int8", progress=False))
    with pytest.raises(ConfigError, match="no calibrated scales"):
        Engine(out, EngineConfig())
    calibrate(out, num_texts=2)
    assert Manifest.load(out).has_calibrated_kv_scales
    engine = Engine(out, EngineConfig())
    engine.add_request("def f():", SamplingParams(max_new_tokens=3, temperature=0))
    while engine.has_unfinished():
        engine.step()

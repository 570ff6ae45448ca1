"""The ONNX Runtime backend with the native CPU kernels (`--native-ops`) against the ONNX
function bodies: the same tokens and near-equal logits through the engine, with the native
KVAppend writing the pool itself (prefix caching, chunked prefill, swap and recompute
preemption, quantized pools); the option's refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import require_native_ops
from trtkv.errors import ConfigError
from trtkv.runtime.backends import native_ops as native_module
from trtkv.runtime.backends.base import BackendConfig
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams


def _run(model_dir, prompts, **options):
    engine = Engine(model_dir, EngineConfig(num_threads=1, block_size=4, **options))
    ids = [engine.add_request(p, SamplingParams(temperature=0, max_new_tokens=20, ignore_eos=True, logprobs=1))
           for p in prompts]
    out = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                out[o.request_id] = o.outputs[0]
        engine.scheduler.check_integrity()
    assert engine.kv.usage().num_used == 0
    return [out[i] for i in ids], engine


@pytest.mark.parametrize("options", [
    {},
    {"kv_dtype": "fp8", "allow_uncalibrated_kv": True},
    {"kv_dtype": "int8", "kv_scales": "dynamic"},
    {"kv_dtype": "bf16"},
])
def test_native_kernels_equal_the_function_bodies_in_the_engine(options, chat_model_dir):
    require_native_ops()
    vocab = json.loads((chat_model_dir / "manifest.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    shared = rng.integers(3, vocab, size=24).tolist()  # prefix-cache hits across requests
    prompts = [shared + rng.integers(3, vocab, size=int(rng.integers(1, 30))).tolist() for _ in range(8)]
    # A small pool, a small budget: chunked prefills mixed with decodes, and preemption.
    common = dict(num_blocks=48, max_num_batched_tokens=24, max_num_seqs=8, enable_prefix_caching=True, num_host_blocks=64,
                  preemption_mode="swap", **options)
    base, off = _run(chat_model_dir, prompts, native_ops="off", **common)
    got, on = _run(chat_model_dir, prompts, native_ops="on", **common)
    assert not off.backend.native_ops and on.backend.native_ops
    for a, b in zip(got, base, strict=True):
        assert a.token_ids == b.token_ids
        lp_a = [lp for _, lp, _ in a.logprobs]
        lp_b = [lp for _, lp, _ in b.logprobs]
        np.testing.assert_allclose(lp_a, lp_b, atol=2e-4)
    stats = on.scheduler.stats()
    assert stats.num_preemptions > 0 and stats.num_chunked_prefills > 0
    assert on.kv.usage().num_hit_blocks > 0


def test_native_ops_option_refusals(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="--native-ops must be auto, on or off"):
        BackendConfig(native_ops="fast")
    monkeypatch.setenv("TRTKV_ORT_INCLUDE", str(tmp_path))  # no headers there
    native_module.native_ops_library.cache_clear()
    try:
        with pytest.raises(ConfigError, match="--native-ops on: .*TRTKV_ORT_INCLUDE"):
            native_module.resolve_native_ops("on")
        assert native_module.resolve_native_ops("auto") is None  # falls back to the function bodies
        assert native_module.resolve_native_ops("off") is None
    finally:
        native_module.native_ops_library.cache_clear()

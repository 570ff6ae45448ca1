"""int8 KV with dynamic scales (a scale per token, KV head and 32 values, stored beside the codes) end to
end: it needs no calibration, does not saturate where the default static scale does, keeps
greedy output on the trained model, survives swap and the disk tier bit for bit, and every
place that cannot run it refuses with what to do."""

from __future__ import annotations

import numpy as np
import pytest

from trtkv.errors import ConfigError
from trtkv.eval_kv import chunk_logprobs
from trtkv.export.exporter import ExportConfig, export
from trtkv.manifest import Manifest
from trtkv.ops.schema import dynamic_scale_groups
from trtkv.runtime.backends.base import BackendConfig
from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams


def _greedy(model_dir, prompts, new=16, **options):
    engine = Engine(model_dir, EngineConfig(num_threads=1, block_size=4, **options))
    ids = [engine.add_request(p, SamplingParams(temperature=0, max_new_tokens=new, ignore_eos=True)) for p in prompts]
    out = {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.finished:
                out[o.request_id] = o.outputs[0].token_ids
        engine.scheduler.check_integrity()
    assert engine.kv.usage().num_used == 0
    return [out[i] for i in ids], engine


def _prompts(vocab, n=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=int(rng.integers(8, 48))).tolist() for _ in range(n)]


def test_dynamic_int8_keeps_greedy_output_without_calibration(chat_model_dir):
    import json

    vocab = json.loads((chat_model_dir / "manifest.json").read_text())["vocab_size"]
    prompts = _prompts(vocab)
    want, _ = _greedy(chat_model_dir, prompts)
    got, engine = _greedy(chat_model_dir, prompts, kv_dtype="int8", kv_scales="dynamic")  # no --allow-uncalibrated-kv
    m = engine.backend.manifest
    assert engine.backend.pools[0].shape[-1] == m.head_dim + dynamic_scale_groups(m.head_dim)
    assert sum(a == b for a, b in zip(got, want, strict=True)) >= 7


def test_dynamic_scales_beat_the_default_static_scale(chat_model_dir):
    """Next-token distributions through the paged path (chunks reading history back from the
    pool) on the trained model's held-out text: KL to fp32 KV is far smaller with a scale per
    token than with the default static int8 scale."""
    from trtkv.models import heldout_text
    from trtkv.runtime.engine import load_tokenizer

    m = Manifest.load(chat_model_dir)
    window = load_tokenizer(chat_model_dir).encode(heldout_text()[:4000], add_special_tokens=False)[:256]

    def logprobs(manifest):
        backend = OnnxRuntimeBackend(chat_model_dir, manifest, BackendConfig(num_blocks=64))
        return np.concatenate(chunk_logprobs(backend, window, 32))

    base = logprobs(m.with_kv("fp32"))

    def kl(manifest):
        return float((np.exp(base) * (base - logprobs(manifest))).sum(axis=1).mean())

    static, dynamic = kl(m.with_kv("int8")), kl(m.with_kv("int8").with_scale_mode("dynamic"))
    assert dynamic < static / 2, (dynamic, static)


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    {"preemption_mode": "swap", "num_host_blocks": 64, "num_blocks": 24, "max_num_batched_tokens": 32,
     "max_num_seqs": 4},
    {"enable_prefix_caching": True, "kv_offload_blocks": 64},
])
def test_dynamic_pool_moves_blocks_exactly(options, exported_factory):
    """Swap and the host offload tier copy the exponent bytes with the codes: the same
    tokens as a roomy run on the same dynamic pool."""
    model_dir = exported_factory("llama")
    prompts = _prompts(320, n=6, seed=6)
    prompts += [p[:20] + q for p, q in zip(prompts[:3], _prompts(320, n=3, seed=7), strict=True)]
    base = {"kv_dtype": "int8", "kv_scales": "dynamic"}
    want, _ = _greedy(model_dir, prompts, **base)
    got, engine = _greedy(model_dir, prompts, **base, **options)
    assert got == want
    stats = engine.scheduler.stats()
    assert stats.num_preemptions_swap > 0 or stats.num_prefix_hit_tokens > 0


def test_export_with_dynamic_scales_and_refusals(checkpoint_factory, exported_factory, tmp_path):
    out = tmp_path / "dyn"
    export(checkpoint_factory("llama"), out, ExportConfig(kv_dtype="int8", kv_scales="dynamic", progress=False))
    m = Manifest.load(out)
    assert m.kv_scale_mode == "dynamic" and m.kv_bytes_per_token() == 2 * m.num_layers * m.num_kv_heads * (
        m.head_dim + dynamic_scale_groups(m.head_dim))
    _greedy(out, _prompts(320, n=2))  # runs with no calibration and no --allow-uncalibrated-kv
    with pytest.raises(ConfigError, match="for int8 KV pools"):
        ExportConfig(kv_dtype="fp8", kv_scales="dynamic")
    with pytest.raises(ConfigError, match="needs no calibration"):
        ExportConfig(kv_dtype="int8", kv_scales="dynamic", calibrate=8)
    from trtkv.export.calibrate import calibrate

    with pytest.raises(ConfigError, match="nothing to calibrate"):
        calibrate(out, 4)
    model_dir = exported_factory("llama")
    with pytest.raises(ConfigError, match="dynamic KV scales are for int8"):
        Engine(model_dir, EngineConfig(kv_dtype="fp8", kv_scales="dynamic"))
    with pytest.raises(ConfigError, match="add --kv-scales dynamic"):
        Engine(model_dir, EngineConfig(kv_dtype="int8"))
    from trtkv.runtime.backends import create_backend

    with pytest.raises(ConfigError, match="KV scales are fixed at export"):
        create_backend(str(model_dir), BackendConfig(backend="tensorrt", kv_scales="dynamic"))

"""Speculative decoding end to end: greedy output with drafts (n-gram lookup, a draft model)
equals greedy output without them, token for token, under KV pressure, small token budgets,
chunked prefill, both preemption modes, prefix caching and quantized pools; scheduler and KV
invariants after every step; nothing leaked."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ALL_FAMILIES
from trtkv.errors import ConfigError
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=40)


def _repetitive_prompts(vocab: int, n: int = 6, seed: int = 0) -> list[list[int]]:
    """Prompts that repeat a phrase (what prompt lookup feeds on) plus random ones."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        phrase = rng.integers(3, vocab, size=int(rng.integers(3, 9))).tolist()
        tail = rng.integers(3, vocab, size=int(rng.integers(1, 20))).tolist()
        prompts.append(phrase * int(rng.integers(2, 5)) + tail if i % 3 else tail + phrase)
    return prompts


def _generate(model_dir, prompts, params=GREEDY, *, late=(), **options):
    """Outputs of every prompt (``late`` ones added after a few steps), checking invariants
    after each step; the engine, for its counters."""
    engine = Engine(model_dir, EngineConfig(num_threads=1, **options))
    ids = [engine.add_request(p, params) for p in prompts]
    outputs, steps = {}, 0
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                outputs[out.request_id] = [c.token_ids for c in out.outputs]
        engine.scheduler.check_integrity()
        steps += 1
        if steps == 3:
            ids += [engine.add_request(p, params) for p in late]
    assert engine.kv.usage().num_used == 0, "device blocks leaked"
    proposer = engine.proposer
    if proposer is not None and hasattr(proposer, "kv"):
        assert proposer.num_seqs == 0 and proposer.kv.num_free_blocks == proposer.kv.num_blocks, "draft blocks leaked"
    return [outputs[i] for i in ids], engine


def _spec_options(method, draft_dir):
    return {"speculative_method": method, **({"draft_model": str(draft_dir)} if method == "draft" else {})}


SETTINGS = {
    "plain": {},
    "kv-pressure-recompute": {"num_blocks": 32, "block_size": 4, "max_num_batched_tokens": 24, "max_num_seqs": 4},
    "kv-pressure-swap": {"num_blocks": 32, "block_size": 4, "preemption_mode": "swap", "num_host_blocks": 64},
    "small-budget": {"max_num_batched_tokens": 5, "max_num_seqs": 3, "enable_chunked_prefill": True},
    "prefix-caching": {"enable_prefix_caching": True, "block_size": 4},
}


def _slow_unless(fast: bool, *values):
    return pytest.param(*values, marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize(("method", "setting"), [
    _slow_unless(setting in ("plain", "kv-pressure-recompute"), method, setting)
    for method in ("ngram", "draft") for setting in sorted(SETTINGS)])
def test_greedy_equals_plain_greedy(method, setting, chat_model_dir):
    """The trained built-in model (its draft: itself, so drafts are long and mostly right)."""
    import json

    vocab = json.loads((chat_model_dir / "manifest.json").read_text())["vocab_size"]
    prompts = _repetitive_prompts(vocab)
    opts = SETTINGS[setting]
    want, base = _generate(chat_model_dir, prompts[:4], late=prompts[4:], **opts)
    got, engine = _generate(chat_model_dir, prompts[:4], late=prompts[4:], **opts,
                            **_spec_options(method, chat_model_dir), num_speculative_tokens=3)
    assert got == want
    c = engine.stats()["counters"]
    assert c["spec_decode_num_accepted_tokens"] > 0
    assert c["steps"] < base.stats()["counters"]["steps"]  # fewer target steps for the same tokens
    if setting.startswith("kv-pressure"):
        assert engine.scheduler.stats().num_preemptions > 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_greedy_equals_plain_greedy_every_family(family, exported_factory):
    """Random-weight models; the draft is a different, 1-layer random model of the family."""
    target = exported_factory(family)
    draft = exported_factory(family, num_layers=1, seed=7)
    prompts = _repetitive_prompts(320, n=4, seed=1)
    opts = {"num_blocks": 32, "block_size": 4, "max_num_batched_tokens": 16, "max_num_seqs": 4}
    want, _ = _generate(target, prompts, **opts)
    for method in ("ngram", "draft"):
        got, engine = _generate(target, prompts, **opts, **_spec_options(method, draft), prompt_lookup_min=1)
        assert got == want, method
        assert engine.stats()["counters"]["spec_decode_num_drafts"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("kv_dtype", ["fp8", "int8"])
def test_greedy_equals_plain_greedy_quantized_pool(kv_dtype, chat_model_dir):
    import json

    vocab = json.loads((chat_model_dir / "manifest.json").read_text())["vocab_size"]
    prompts = _repetitive_prompts(vocab, n=4, seed=2)
    opts = {"kv_dtype": kv_dtype, "allow_uncalibrated_kv": True, "block_size": 4}
    want, _ = _generate(chat_model_dir, prompts, **opts)
    got, engine = _generate(chat_model_dir, prompts, **opts, speculative_method="ngram")
    assert got == want
    assert engine.stats()["counters"]["spec_decode_num_accepted_tokens"] > 0


def test_sampled_and_n_and_stop_strings_run_clean(chat_model_dir):
    """Sampled verification (both proposers), n > 1 forks, logprobs, penalties and a stop
    string cut inside an accepted draft: outputs are well formed and nothing leaks."""
    import json

    vocab = json.loads((chat_model_dir / "manifest.json").read_text())["vocab_size"]
    prompts = _repetitive_prompts(vocab, n=3, seed=3)
    params = SamplingParams(temperature=0.7, top_p=0.9, n=2, seed=5, max_new_tokens=24, logprobs=2,
                            repetition_penalty=1.1, min_tokens=3)
    for method in ("ngram", "draft"):
        outs, engine = _generate(chat_model_dir, prompts, params, **_spec_options(method, chat_model_dir),
                                 **({"prompt_lookup_min": 1} if method == "ngram" else {}))
        for completions in outs:
            assert len(completions) == 2 and all(3 <= len(t) <= 24 for t in completions)
        assert engine.stats()["counters"]["spec_decode_num_drafts"] > 0
    engine = Engine(chat_model_dir, EngineConfig(num_threads=1, speculative_method="draft",
                                                 draft_model=str(chat_model_dir)))
    text = "def add(a, b):\n    return a + b\n\ndef add(a, b):\n"
    plain = Engine(chat_model_dir, EngineConfig(num_threads=1))
    full = _text(plain, text, SamplingParams(temperature=0, max_new_tokens=30))
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip(), full
    got = _text(engine, text, SamplingParams(temperature=0, max_new_tokens=30, stop=[stop]))
    assert got == full[: full.index(stop)]
    assert engine.kv.usage().num_used == 0


def _text(engine: Engine, prompt: str, params: SamplingParams) -> str:
    engine.add_request(prompt, params, request_id="r")
    text = ""
    while engine.has_unfinished():
        for out in engine.step():
            text = out.outputs[0].text
    return text


def test_options_are_checked(exported_factory, tmp_path):
    with pytest.raises(ConfigError, match="needs --draft-model"):
        EngineConfig(speculative_method="draft")
    with pytest.raises(ConfigError, match="needs --speculative-method"):
        EngineConfig(num_speculative_tokens=3)
    with pytest.raises(ConfigError, match="applies to --speculative-method draft"):
        EngineConfig(speculative_method="ngram", draft_model="x")
    with pytest.raises(ConfigError, match="prompt-lookup"):
        EngineConfig(speculative_method="ngram", prompt_lookup_min=3, prompt_lookup_max=2)
    other = exported_factory("llama", vocab_size=384)
    with pytest.raises(ConfigError, match="vocabulary of 384 tokens"):
        Engine(exported_factory("llama"), EngineConfig(speculative_method="draft", draft_model=str(other)))


def test_metrics_report_acceptance(chat_model_dir):
    import json

    from trtkv.serving import prometheus

    vocab = json.loads((chat_model_dir / "manifest.json").read_text())["vocab_size"]
    _, engine = _generate(chat_model_dir, _repetitive_prompts(vocab, n=3, seed=4), speculative_method="ngram")
    c = engine.stats()["counters"]
    spec = engine.stats()["speculative"]
    assert spec["acceptance_rate"] == c["spec_decode_num_accepted_tokens"] / c["spec_decode_num_draft_tokens"]
    assert spec["mean_accepted_length"] == 1 + c["spec_decode_num_accepted_tokens"] / c["spec_decode_num_drafts"]
    page = prometheus.render(prometheus.collect(engine), {}, model_name="m").decode()
    assert f'vllm:spec_decode_num_accepted_tokens_total{{model_name="m"}} {float(c["spec_decode_num_accepted_tokens"])}' in page
    assert f"trtkv_spec_decode_num_draft_tokens_total {float(c['spec_decode_num_draft_tokens'])}" in page
    assert "trtkv_spec_decode_acceptance_rate" in page


def test_engine_profile_too_small_for_drafts_is_refused(exported_factory):
    """An engine whose profile bounds the logits rows below what drafts may need (a TensorRT
    engine built before speculative decoding) is refused at start, with what to do."""
    from trtkv.manifest import Manifest
    from trtkv.runtime.backends.base import BackendConfig
    from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    model_dir = exported_factory("llama")
    backend = OnnxRuntimeBackend(model_dir, Manifest.load(model_dir), BackendConfig(num_blocks=32))
    backend.max_logits_rows = 8
    with pytest.raises(ConfigError, match="at most 8 logits rows"):
        Engine(model_dir, EngineConfig(speculative_method="ngram"), backend=backend)
    Engine(model_dir, EngineConfig(), backend=backend)  # without drafts it serves


def test_draft_catch_up_is_chunked_to_the_draft_backends_step(chat_model_dir):
    """A draft backend with a step limit (a TensorRT engine's max tokens; here 8 on ONNX
    Runtime) gets long unseen contexts in chunks: same greedy tokens, no error."""
    import json

    vocab = json.loads((chat_model_dir / "manifest.json").read_text())["vocab_size"]
    prompts = _repetitive_prompts(vocab, n=3, seed=8)
    want, _ = _generate(chat_model_dir, prompts)
    engine = Engine(chat_model_dir, EngineConfig(num_threads=1, speculative_method="draft",
                                                 draft_model=str(chat_model_dir)))
    engine.proposer.backend.max_num_tokens = 8
    seen = []
    execute = engine.proposer.backend.execute
    engine.proposer.backend.execute = lambda plan: seen.append(plan.num_tokens) or execute(plan)
    ids = [engine.add_request(p, GREEDY) for p in prompts]
    done = {}
    while engine.has_unfinished():
        done.update({o.request_id: [c.token_ids for c in o.outputs] for o in engine.step() if o.finished})
    assert [done[i] for i in ids] == want
    assert max(seen) <= 8 and engine.stats()["counters"]["spec_decode_num_accepted_tokens"] > 0

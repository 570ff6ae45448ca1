"""Beam search on fork / copy-on-write: output equals Hugging Face transformers'
``generate(num_beams=n, do_sample=False)`` (length penalty, early stopping, several end
tokens), beams share prompt blocks, and nothing leaks, also under KV pressure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from trtkv.errors import InvalidRequestError
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams


def _prompts(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 320, size=int(rng.integers(2, 40))).tolist() for _ in range(n)]


def _hf_beams(hf, prompt, n, max_new, length_penalty, early_stopping, eos):
    out = hf.generate(torch.tensor([prompt]), num_beams=n, num_return_sequences=n, do_sample=False,
                      max_new_tokens=max_new, length_penalty=length_penalty, early_stopping=early_stopping,
                      eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    lengths = (out.beam_indices >= 0).sum(dim=1).tolist()
    return [tuple(seq[len(prompt): len(prompt) + k].tolist()) for seq, k in zip(out.sequences, lengths, strict=True)]


def _run(engine: Engine, prompts, params):
    ids = [engine.add_request(p, params) for p in prompts]
    final, peak = {}, 0
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
        engine.scheduler.check_integrity()
        peak = max(peak, engine.kv.usage().num_used)
    assert engine.kv.usage().num_used == 0, "KV blocks leaked"
    return [final[i] for i in ids], peak


CASES = [  # n, length_penalty, early_stopping, extra end token
    (3, 1.0, False, False),
    (4, 0.5, True, True),
    (2, 2.0, "never", True),
    (3, -1.0, False, True),
    (3, 1.0, False, True),
    (2, 0.0, False, True),
    (3, 1.5, True, True),
]


@pytest.mark.parametrize(("family", "case"), [
    pytest.param(family, case, marks=() if (family, case) in (("llama", 1), ("qwen2", 4)) else pytest.mark.slow)
    for family in ("llama", "qwen2") for case in range(len(CASES))])
def test_beam_search_equals_hf(family, case, checkpoint_factory, exported_factory):
    n, lp, es, extra_end = CASES[case]
    ckpt, model_dir = checkpoint_factory(family), exported_factory(family)
    hf = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    prompts = _prompts(5, seed=case)
    max_new = 16
    stop_ids: list[int] = []
    if extra_end:  # the two tokens the model emits most, as more end tokens: beams finish at many lengths
        counts: dict[int, int] = {}
        for p in prompts:
            out = hf.generate(torch.tensor([p]), do_sample=False, max_new_tokens=max_new, pad_token_id=0)
            for t in out[0, len(p):].tolist():
                counts[t] = counts.get(t, 0) + 1
        stop_ids = sorted(counts, key=lambda t: -counts[t])[:2]
    engine = Engine(model_dir, EngineConfig(num_threads=1, block_size=4))
    params = SamplingParams(n=n, use_beam_search=True, length_penalty=lp, early_stopping=es, max_new_tokens=max_new,
                            stop_token_ids=stop_ids)
    outs, _ = _run(engine, prompts, params)
    for prompt, out in zip(prompts, outs, strict=True):
        want = _hf_beams(hf, prompt, n, max_new, lp, es, [2, *stop_ids])
        assert [c.token_ids for c in out.outputs] == want
        for c in out.outputs:
            ended = c.token_ids[-1] in (2, *stop_ids)
            assert c.finish_reason == ("stop" if ended else "length")


@pytest.mark.slow
def test_beams_share_blocks_and_survive_preemption(checkpoint_factory, exported_factory):
    ckpt, model_dir = checkpoint_factory("llama"), exported_factory("llama")
    prompt = _prompts(1, seed=9)[0] + _prompts(1, seed=10)[0]
    n, max_new = 4, 16
    single, peak_single = _run(Engine(model_dir, EngineConfig(num_threads=1, block_size=4)), [prompt],
                               SamplingParams(temperature=0, max_new_tokens=max_new, ignore_eos=True))
    beams, peak_beams = _run(Engine(model_dir, EngineConfig(num_threads=1, block_size=4)), [prompt],
                             SamplingParams(n=n, use_beam_search=True, max_new_tokens=max_new, ignore_eos=True))
    assert peak_beams < n * peak_single  # the prompt's blocks are shared by every beam
    hf = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    want = _hf_beams(hf, prompt, n, max_new, 1.0, False, None)
    assert [c.token_ids for c in beams[0].outputs] == want
    # Under KV pressure, with other requests: beams are preempted and recomputed or swapped.
    others = _prompts(4, seed=11)
    for mode in ("recompute", "swap"):
        engine = Engine(model_dir, EngineConfig(num_threads=1, block_size=4, num_blocks=40, max_num_seqs=8,
                                                max_num_batched_tokens=32, preemption_mode=mode,
                                                num_host_blocks=64 if mode == "swap" else 0))
        ids = [engine.add_request(prompt, SamplingParams(n=n, use_beam_search=True, max_new_tokens=max_new,
                                                         ignore_eos=True))]
        ids += [engine.add_request(p, SamplingParams(temperature=0, max_new_tokens=max_new)) for p in others]
        final = {}
        while engine.has_unfinished():
            for out in engine.step():
                if out.finished:
                    final[out.request_id] = out
            engine.scheduler.check_integrity()
        assert engine.scheduler.stats().num_preemptions > 0, mode
        assert [c.token_ids for c in final[ids[0]].outputs] == want, mode
        assert engine.kv.usage().num_used == 0


def test_beam_search_options_are_checked(exported_factory):
    with pytest.raises(InvalidRequestError, match="apply to beam search"):
        SamplingParams(length_penalty=0.5)
    with pytest.raises(InvalidRequestError, match="does not support top_p, logprobs"):
        SamplingParams(n=2, use_beam_search=True, top_p=0.5, logprobs=1)
    with pytest.raises(InvalidRequestError, match="early_stopping"):
        SamplingParams(n=2, use_beam_search=True, early_stopping="sometimes")
    engine = Engine(exported_factory("llama"), EngineConfig(num_threads=1))
    rid = engine.add_request([5, 6, 7], SamplingParams(n=3, use_beam_search=True, max_new_tokens=8))
    engine.step()
    engine.step()
    out = engine.abort(rid)
    assert out is not None and out.finished and not engine.has_unfinished()
    assert engine.kv.usage().num_used == 0


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    {"enable_prefix_caching": True},
    {"kv_dtype": "fp8", "allow_uncalibrated_kv": True},
    {"kv_dtype": "int8", "allow_uncalibrated_kv": True, "enable_prefix_caching": True},
    {"max_num_batched_tokens": 8, "max_num_seqs": 4, "enable_chunked_prefill": True},
])
def test_beam_search_with_prefix_caching_chunking_and_quantized_pools(options, exported_factory):
    """Beams equal those of a plain run on a pool of the same dtype (no caching, no chunking),
    for a request and for the same request again (served from the prefix cache when on)."""
    model_dir = exported_factory("llama")
    prompt = _prompts(1, seed=12)[0] * 2
    params = SamplingParams(n=3, use_beam_search=True, max_new_tokens=10, ignore_eos=True)
    base_opts = {k: v for k, v in options.items() if k in ("kv_dtype", "allow_uncalibrated_kv")}
    (want,), _ = _run(Engine(model_dir, EngineConfig(num_threads=1, block_size=4, **base_opts)), [prompt], params)
    engine = Engine(model_dir, EngineConfig(num_threads=1, block_size=4, **options))
    (first, second), _ = _run(engine, [prompt, prompt], params)
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in want.outputs]
    assert [c.token_ids for c in second.outputs] == [c.token_ids for c in want.outputs]
    if options.get("enable_prefix_caching"):
        assert engine.scheduler.stats().num_prefix_hit_tokens > 0


@pytest.mark.parametrize(("length_penalty", "early_stopping"), [
    (1.0, False), pytest.param(2.0, False, marks=pytest.mark.slow), pytest.param(0.7, "never", marks=pytest.mark.slow)])
def test_beam_search_equals_hf_on_the_trained_model(length_penalty, early_stopping, chat_model_dir):
    """The trained built-in model with its newline tokens as end tokens: hypotheses finish at
    many lengths, so the stopping heuristics decide the result."""
    from trtkv.models import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip("the built-in trained checkpoint is not in this tree")
    hf = AutoModelForCausalLM.from_pretrained(str(DEFAULT_MODEL_DIR), dtype=torch.float32).eval()
    engine = Engine(chat_model_dir, EngineConfig(num_threads=1, block_size=8))
    tok = engine.tokenizer
    newline_ids = sorted(i for t, i in tok.get_vocab().items() if "\u010a" in t)[:6]  # byte-level "\n"
    eos = list(engine.eos_token_ids)
    prompts = [tok.encode(t, add_special_tokens=False) for t in
               ("def add(a, b):", "import os\nimport", "class Node:\n    def __init__(self", "for i in range(")]
    params = SamplingParams(n=3, use_beam_search=True, length_penalty=length_penalty, early_stopping=early_stopping,
                            max_new_tokens=20, stop_token_ids=newline_ids)
    outs, _ = _run(engine, prompts, params)
    lengths = set()
    for prompt, out in zip(prompts, outs, strict=True):
        want = _hf_beams(hf, prompt, 3, 20, length_penalty, early_stopping, [*eos, *newline_ids])
        assert [c.token_ids for c in out.outputs] == want
        lengths |= {len(t) for t in want}
    assert len(lengths) > 2  # finished at several lengths

"""The engine end to end on ONNX Runtime: exact HF greedy output under KV and token pressure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams

NEW = 24


def _prompts(n: int, seed: int, vocab: int = 320) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 160, size=n)
    return [[int(t) for t in rng.integers(3, vocab, size=int(k))] for k in lens]


def _run(engine: Engine, first: list[list[int]], late: list[list[int]], params: SamplingParams):
    """Add ``first``, step until everything decodes, then add ``late`` while they run."""
    ids = [engine.add_request(p, params) for p in first]
    final = {}
    steps = 0
    while engine.has_unfinished() or len(ids) < len(first) + len(late):
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
        engine.kv.check_integrity()
        steps += 1
        if steps == 6:
            ids += [engine.add_request(p, params) for p in late]
    return [final[i] for i in ids]


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_greedy_matches_hf_under_preemption_and_chunking(mode, checkpoint_factory, exported_factory):
    ckpt, model_dir = checkpoint_factory("llama"), exported_factory("llama")
    prompts = _prompts(16, seed=3)
    config = EngineConfig(num_blocks=40, block_size=16, max_num_batched_tokens=64, max_num_seqs=12,
                          preemption_mode=mode, num_host_blocks=64 if mode == "swap" else 0)
    engine = Engine(model_dir, config)
    outs = _run(engine, prompts[:8], prompts[8:], SamplingParams(temperature=0, max_new_tokens=NEW, ignore_eos=True))
    stats = engine.stats()["scheduler"]
    assert stats["num_preemptions"] > 0, "the pool was meant to be too small: no preemption happened"
    assert stats["num_chunked_prefills"] > 0, "no prompt was chunked"
    if mode == "swap":
        assert stats["num_preemptions_swap"] > 0
    assert stats["kv"]["num_used"] == 0, "KV blocks leaked"
    hf = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    for p, out in zip(prompts, outs, strict=True):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(p):].tolist()
        assert list(out.outputs[0].token_ids) == ref


def test_seeded_sampling_is_batch_independent_and_n_shares_blocks(exported_factory):
    model_dir = exported_factory("qwen3")
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=1234, max_new_tokens=12, ignore_eos=True)
    prompt = list(range(5, 45))
    alone = Engine(model_dir, EngineConfig(num_blocks=128, block_size=16))
    rid = alone.add_request(prompt, params)
    solo = [o for o in _drain(alone) if o.request_id == rid][0].outputs[0].token_ids
    busy = Engine(model_dir, EngineConfig(num_blocks=128, block_size=16, max_num_batched_tokens=32, max_num_seqs=8))
    for p in _prompts(6, seed=9):
        busy.add_request(p, SamplingParams(temperature=1.0, max_new_tokens=20, ignore_eos=True))
    rid = busy.add_request(prompt, params)
    batched = [o for o in _drain(busy) if o.request_id == rid][0].outputs[0].token_ids
    assert solo == batched

    def peak_blocks(n: int) -> int:
        eng = Engine(model_dir, EngineConfig(num_blocks=128, block_size=16))
        eng.add_request(prompt, SamplingParams(temperature=1.0, n=n, seed=5, max_new_tokens=8, ignore_eos=True))
        peak, outs = 0, []
        while eng.has_unfinished():
            outs += eng.step()
            peak = max(peak, eng.kv.usage().num_used)
        assert len(outs[-1].outputs) == n and outs[-1].finished
        return peak

    assert peak_blocks(4) < 4 * peak_blocks(1), "n=4 should share the prompt's blocks"


def _drain(engine: Engine):
    outs = []
    while engine.has_unfinished():
        outs += [o for o in engine.step() if o.finished]
    return outs


def test_abort_and_rejections_leave_pool_clean(exported_factory):
    from trtkv.errors import RequestRejectedError

    engine = Engine(exported_factory("llama"), EngineConfig(num_blocks=16, block_size=16, max_num_queued_requests=2))
    a = engine.add_request(list(range(3, 100)), SamplingParams(max_new_tokens=50, temperature=0))
    engine.add_request([5, 6], SamplingParams(max_new_tokens=4, temperature=0))
    with pytest.raises(RequestRejectedError) as exc:
        engine.add_request([7], SamplingParams(max_new_tokens=4))
    assert exc.value.reason == "queue_full"
    with pytest.raises(RequestRejectedError) as exc:
        Engine(exported_factory("llama"), EngineConfig(num_blocks=2, block_size=16)).add_request(
            list(range(3, 40)), SamplingParams(max_new_tokens=4))
    assert exc.value.reason == "kv_capacity"
    engine.step()
    engine.step()
    out = engine.abort(a)
    assert out is not None and out.outputs[0].finish_reason == "abort"
    _drain(engine)
    engine.kv.check_integrity()
    assert engine.kv.usage().num_used == 0
    assert engine.stats()["rejected_by_reason"]["queue_full"] == 1


def test_n_never_exceeds_max_num_seqs_and_small_requests_still_run(exported_factory):
    """A request's n forks are reserved at admission: running sequences stay <= max_num_seqs
    every step, a concurrent small request finishes, and n > max_num_seqs is refused."""
    from trtkv.errors import RequestRejectedError

    engine = Engine(exported_factory("llama"), EngineConfig(num_blocks=64, block_size=16, max_num_seqs=4))
    with pytest.raises(RequestRejectedError) as exc:
        engine.add_request([3, 4, 5], SamplingParams(n=5, max_new_tokens=4))
    assert exc.value.reason == "too_many_seqs" and "max_num_seqs (4)" in str(exc.value)
    wide = [engine.add_request(list(range(3, 20 + i)), SamplingParams(n=3, max_new_tokens=12, seed=i))
            for i in range(3)]
    small = engine.add_request([7, 8, 9], SamplingParams(max_new_tokens=4, temperature=0))
    done: dict[str, int] = {}
    for _ in range(200):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            if out.finished:
                done[out.request_id] = len(out.outputs)
        assert engine.scheduler.stats().num_running <= 4
    assert done == {**{r: 3 for r in wide}, small: 1}
    engine.kv.check_integrity()
    assert engine.kv.usage().num_used == 0
    assert engine.stats()["rejected_by_reason"] == {"too_many_seqs": 1}


def test_counters_agree_between_engine_and_scheduler(exported_factory):
    """One owner per count: rejections are counted once per request by engine and scheduler
    alike; finished_by_reason counts completions (choices) whether a request ends or is aborted."""
    from trtkv.errors import RequestRejectedError

    engine = Engine(exported_factory("llama"), EngineConfig(num_blocks=64, block_size=16, max_model_len=64))
    for prompt, max_new in ((list(range(3, 70)), 4), (list(range(3, 40)), 40)):  # fills the context / overflows it
        with pytest.raises(RequestRejectedError):
            engine.add_request(prompt, SamplingParams(max_new_tokens=max_new))
    assert engine.stats()["rejected_by_reason"] == {"too_long": 2}
    assert engine.scheduler.stats().num_rejected["too_long"] == 2
    done = engine.add_request([5, 6, 7], SamplingParams(n=3, max_new_tokens=3, ignore_eos=True, seed=1))
    _drain(engine)
    assert engine.stats()["finished_by_reason"] == {"length": 3}
    aborted = engine.add_request([5, 6, 8], SamplingParams(n=3, max_new_tokens=30, seed=2))
    out = engine.abort(aborted)
    assert out is not None and len(out.outputs) <= 3 and done != aborted
    assert engine.stats()["finished_by_reason"] == {"length": 3, "abort": 3}
    engine.kv.check_integrity()
    assert engine.kv.usage().num_used == 0

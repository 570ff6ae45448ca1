"""Structured output in the engine: every drawn token is one the grammar allows, outputs
match their constraint under sampling, forks (n > 1), chunked prefill and preemption, and a
constraint that does not compile is refused with nothing kept."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from trtkv.errors import InvalidRequestError
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import GuidedDecoding, SamplingParams
from trtkv.runtime.sampling.guided import Guide

pytest.importorskip("llguidance")

SCHEMA = {"type": "object", "properties": {"k": {"enum": ["a", "b"]}, "n": {"type": "integer", "minimum": 0,
          "maximum": 9}}, "required": ["k", "n"], "additionalProperties": False}


@pytest.fixture(scope="module")
def engine(chat_model_dir) -> Engine:
    return Engine(chat_model_dir, EngineConfig(num_blocks=64, num_threads=1, max_num_batched_tokens=32, max_num_seqs=8))


def _run(engine: Engine, prompts: list[str], params: SamplingParams) -> list:
    ids = [engine.add_request(p, params) for p in prompts]
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert engine.kv.usage().num_used == 0, "blocks leaked"
    return [done[i] for i in ids]


def test_mask_is_the_matchers_bitmask(engine: Engine) -> None:
    """Guide.apply forbids exactly the tokens llguidance's own bitmask forbids."""
    guide = engine.grammars.guide(GuidedDecoding.json_schema(SCHEMA))
    twin = engine.grammars.guide(GuidedDecoding.json_schema(SCHEMA))._matcher
    rng = np.random.default_rng(0)
    vocab = engine.manifest.vocab_size
    for _ in range(12):
        if guide.is_done:
            break
        row = rng.normal(size=vocab)
        guide.apply(row)
        bits = np.frombuffer(twin.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[:vocab].astype(bool)
        assert np.array_equal(np.isfinite(row), allowed)
        token = int(np.argmax(row))
        assert twin.validate_tokens([token]) == 1
        guide.consume(token)
        assert twin.consume_token(token)


@pytest.mark.parametrize("constraint,check", [
    (GuidedDecoding.json_schema(SCHEMA), lambda t: json.loads(t)["k"] in ("a", "b")),
    (GuidedDecoding.regex(r"[a-z]{2,4}_[0-9]{2}"), lambda t: re.fullmatch(r"[a-z]{2,4}_[0-9]{2}", t)),
    (GuidedDecoding.choice(["alpha", "beta", "gamma"]), lambda t: t in ("alpha", "beta", "gamma")),
    (GuidedDecoding.grammar('root ::= "<" [a-c]+ ">"'), lambda t: re.fullmatch(r"<[a-c]+>", t)),
])
def test_sampled_outputs_follow_the_constraint(engine: Engine, constraint: GuidedDecoding, check) -> None:
    params = SamplingParams(max_new_tokens=48, temperature=1.0, seed=7, n=3, guided=constraint)
    outs = _run(engine, ["def f(x):\n    return", "import sys\n" * 6], params)  # the 2nd prompt is chunked
    for out in outs:
        texts = [c.text for c in out.outputs if c.finish_reason == "stop"]
        assert len(texts) >= 2, [(c.text, c.finish_reason) for c in out.outputs]
        for text in texts:
            assert check(text), text


def test_guided_output_survives_preemption(chat_model_dir) -> None:
    """Recompute preemption keeps the output tokens, so the grammar state stays in step."""
    tight = Engine(chat_model_dir, EngineConfig(num_blocks=10, block_size=8, num_threads=1,
                                                max_num_batched_tokens=64, max_num_seqs=8))
    params = SamplingParams(max_new_tokens=40, temperature=0.8, seed=3, guided=GuidedDecoding.json_schema(SCHEMA))
    outs = _run(tight, ["x = 1\n" * 4] * 4, params)
    assert tight.scheduler.stats().num_preemptions_recompute > 0
    for out in outs:
        json.loads(out.outputs[0].text)


def test_bad_constraint_is_refused_and_nothing_kept(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError, match="does not compile") as info:
        engine.add_request("x", SamplingParams(guided=GuidedDecoding("regex", "(open", "guided_regex")))
    assert info.value.param == "guided_regex"
    with pytest.raises(InvalidRequestError, match="invalid"):
        engine.add_request("x", SamplingParams(guided=GuidedDecoding.json_schema("[1, 2]")))
    assert not engine.has_unfinished() and engine.kv.usage().num_used == 0
    assert isinstance(engine.grammars.guide(GuidedDecoding.regex("a")), Guide)  # still compiles others

"""The sampler's draft verification: greedy keeps exactly the argmax chain; rejection sampling
emits tokens distributed as the target's (chi-square over seeded draws, a tiny vocabulary),
with a sampling draft model's distributions and with point-mass drafts (n-gram lookup)."""

from __future__ import annotations

import numpy as np
import pytest

from trtkv.runtime.sampling import Sampler, SampleRow, SamplingParams, make_generator

V = 6
CHI2_DF5_P001 = 20.52  # chi-square critical value, 5 degrees of freedom, p = 0.001


def _chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def _target(rng: np.random.Generator, k: int) -> np.ndarray:
    p = rng.dirichlet(np.ones(V) * 0.8, size=k + 1)
    return np.maximum(p, 0.02) / np.maximum(p, 0.02).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("draft_kind", ["sampled-draft-model", "point-mass"])
def test_rejection_sampling_matches_the_target_distribution(draft_kind):
    rng = np.random.default_rng(0)
    k = 2
    p = _target(rng, k)  # p[j]: the target's distribution after the j-th draft token (any prefix)
    q = _target(rng, k - 1)[:k]  # the draft's
    logits = np.log(p).astype(np.float32)
    sampler = Sampler()
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    gen = make_generator(1)
    counts = np.zeros((k + 1, V))
    draft_rng = np.random.default_rng(2)
    n = 12_000
    for _ in range(n):
        if draft_kind == "point-mass":
            draft, probs = [int(p[0].argmax()), int(p[1].argmax())], None  # fixed guesses, as prompt lookup makes
        else:
            draft, probs = [int(draft_rng.choice(V, p=q[j])) for j in range(k)], q
        (result,) = sampler.sample(logits, [SampleRow(params, (), (), [gen], draft=draft, draft_probs=probs)])
        assert 1 <= len(result.token_ids) <= k + 1 and result.token_ids[:-1] == draft[: len(result.token_ids) - 1]
        for j, t in enumerate(result.token_ids):
            counts[j, t] += 1
    # the j-th emitted token, whenever there is one, follows p[j] (its prefix was accepted)
    for j in range(k + 1):
        assert counts[j].sum() > 500
        assert _chi2(counts[j], p[j]) < CHI2_DF5_P001, (j, counts[j] / counts[j].sum(), p[j])
    if probs is not None:  # the test has the power to tell: the draft's own distribution fails it
        assert _chi2(counts[0], q[0]) > 100


def test_greedy_verification_keeps_the_argmax_chain():
    logits = np.full((4, V), -1.0, dtype=np.float32)
    for j, best in enumerate([3, 1, 5, 2]):
        logits[j, best] = 2.0
    sampler = Sampler()
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8, logprobs=1)
    for draft, want in [([3, 1, 5], [3, 1, 5, 2]), ([3, 0, 5], [3, 1]), ([0, 1, 5], [3]), ([3, 1, 4], [3, 1, 5])]:
        (r,) = sampler.sample(logits, [SampleRow(greedy, (), (), [make_generator(0)], draft=draft)])
        assert r.token_ids == want
        assert [lp.token_id for lp in r.logprobs] == want
    # rows without drafts beside it keep their own single row
    rows = [SampleRow(greedy, (), (), [make_generator(0)]),
            SampleRow(greedy, (), (), [make_generator(0)], draft=[1, 5])]
    both = sampler.sample(np.concatenate([logits[:1], logits[1:]]), rows)
    assert [r.token_ids for r in both] == [[3], [1, 5, 2]]


def test_penalties_see_the_draft_as_output():
    """Row j is processed as if draft[:j] were already generated: a presence penalty there
    turns the argmax away from a token the draft already produced."""
    logits = np.zeros((3, V), dtype=np.float32)
    logits[:, 2] = 1.0
    logits[:, 3] = 0.5
    params = SamplingParams(temperature=0.0, max_new_tokens=8, presence_penalty=1.0)
    (r,) = Sampler().sample(logits, [SampleRow(params, (), (), [make_generator(0)], draft=[2, 2])])
    assert r.token_ids == [2, 3]  # the second 2 is rejected: with one 2 in the output, 3 leads

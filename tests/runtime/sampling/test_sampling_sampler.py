"""Sampler: greedy, filters, penalties, temperature, seeding, n-way forks and logprobs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from trtkv.runtime.sampling import Sampler, SampleRow, SamplingParams, make_generator
from trtkv.runtime.sampling import processors as proc

V = 8


def row(params: SamplingParams, output_ids: Sequence[int] = (), prompt_ids: Sequence[int] = (),
        num_samples: int = 1) -> SampleRow:
    gens = [make_generator(params.seed, i) for i in range(num_samples)]
    return SampleRow(params, prompt_ids, output_ids, gens)


def random_logits(rows: int, vocab: int = V, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, vocab)).astype(np.float32) * 3


def test_greedy_is_argmax_with_lowest_id_on_ties_and_uses_no_randomness() -> None:
    logits = random_logits(5)
    logits[2] = [0, 5, 1, 5, 5, 0, 0, 0]
    gen = make_generator(123)
    state = gen.bit_generator.state
    rows = [SampleRow(SamplingParams(temperature=0), [], [], [gen]) for _ in range(5)]
    results = Sampler().sample(logits, rows)
    assert [r.token_ids[0] for r in results] == list(np.argmax(logits, axis=1))
    assert results[2].token_ids == [1]
    assert gen.bit_generator.state == state


def test_top_k_1_equals_greedy() -> None:
    logits = random_logits(6, vocab=50)
    greedy = Sampler().sample(logits, [row(SamplingParams(temperature=0)) for _ in range(6)])
    top1 = Sampler().sample(
        logits, [row(SamplingParams(top_k=1, temperature=2.0, seed=s)) for s in range(6)]
    )
    assert [r.token_ids for r in greedy] == [r.token_ids for r in top1]


def kept(logits: np.ndarray, apply: Callable[[np.ndarray, np.ndarray], None],
         values: list[float]) -> list[list[int]]:
    filtered = logits.copy()
    apply(filtered, np.array(values))
    return [np.flatnonzero(np.isfinite(r)).tolist() for r in filtered]


def test_filters_mask_exactly_the_expected_tokens() -> None:
    probs = np.array([[0.4, 0.3, 0.15, 0.1, 0.05], [0.05, 0.1, 0.15, 0.3, 0.4]])
    logits = np.log(probs)
    assert kept(logits, proc.apply_top_k, [2, 3]) == [[0, 1], [2, 3, 4]]
    assert kept(logits, proc.apply_top_k, [0, 5]) == [list(range(5))] * 2
    # top_p: 0.4 < 0.5 -> the 0.3 token is needed too; 0.4 + 0.3 < 0.8 -> 3 tokens.
    assert kept(logits, proc.apply_top_p, [0.5, 0.8]) == [[0, 1], [2, 3, 4]]
    assert kept(logits, proc.apply_top_p, [0.35, 1.0]) == [[0], list(range(5))]
    assert kept(logits, proc.apply_top_p, [0.01, 0.01]) == [[0], [4]]
    # min_p: keep p >= min_p * p_max: 0.5 * 0.4 = 0.2, 0.2 * 0.4 = 0.08.
    assert kept(logits, proc.apply_min_p, [0.5, 0.2]) == [[0, 1], [1, 2, 3, 4]]
    ties = np.log(np.array([[0.25, 0.25, 0.25, 0.25]]))
    assert kept(ties, proc.apply_top_k, [2]) == [[0, 1, 2, 3]]


def empirical(logits: np.ndarray, params: SamplingParams, draws: int = 4000) -> np.ndarray:
    gen = np.random.default_rng(7)
    rows = [SampleRow(params, [], [], [gen]) for _ in range(draws)]
    tokens = [r.token_ids[0] for r in Sampler().sample(np.repeat(logits, draws, 0), rows)]
    return np.bincount(tokens, minlength=logits.shape[1]) / draws


def test_sampled_distribution_follows_filters() -> None:
    logits = np.log(np.array([[0.4, 0.3, 0.15, 0.1, 0.05]], dtype=np.float32))
    freq = empirical(logits, SamplingParams(top_p=0.8))
    assert np.flatnonzero(freq).tolist() == [0, 1, 2]
    np.testing.assert_allclose(freq[:3], np.array([0.4, 0.3, 0.15]) / 0.85, atol=0.03)
    freq = empirical(logits, SamplingParams(top_k=2, min_p=0.5))
    np.testing.assert_allclose(freq, [4 / 7, 3 / 7, 0, 0, 0], atol=0.03)
    freq = empirical(logits, SamplingParams())
    np.testing.assert_allclose(freq, [0.4, 0.3, 0.15, 0.1, 0.05], atol=0.03)


def test_temperature_scales_logits() -> None:
    logits = np.log(np.array([[0.6, 0.3, 0.1]], dtype=np.float32))
    expected = np.array([0.6, 0.3, 0.1]) ** 2
    freq = empirical(logits, SamplingParams(temperature=0.5))
    np.testing.assert_allclose(freq, expected / expected.sum(), atol=0.03)
    result = Sampler().sample(logits, [row(SamplingParams(temperature=0.5, logprobs=3))])[0]
    assert result.logprobs is not None
    lp = dict(result.logprobs[0].top)
    np.testing.assert_allclose([lp[0], lp[1], lp[2]], np.log(expected / expected.sum()),
                               rtol=1e-6)


def processed_logprobs(logits: np.ndarray, params: SamplingParams, output_ids: Sequence[int],
                       prompt_ids: Sequence[int] = ()) -> np.ndarray:
    """Full logprob vector reported by the sampler (logprobs=V)."""
    result = Sampler().sample(logits[None], [row(params, output_ids, prompt_ids)])[0]
    assert result.logprobs is not None
    out = np.empty(logits.shape[0])
    for token, lp in result.logprobs[0].top:
        out[token] = lp
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = np.array([2.0, -1.0, 0.5, -3.0, 1.0], dtype=np.float32)
    params = SamplingParams(temperature=0, repetition_penalty=2.0, logprobs=5)
    got = processed_logprobs(logits, params, output_ids=[1, 1], prompt_ids=[0, 3])
    expected = np.array([1.0, -2.0, 0.5, -6.0, 1.0])  # prompt and output both count
    np.testing.assert_allclose(got, log_softmax(expected), rtol=1e-6)


def test_presence_and_frequency_penalties_count_output_only() -> None:
    logits = np.array([2.0, -1.0, 0.5, -3.0, 1.0], dtype=np.float32)
    params = SamplingParams(temperature=0, presence_penalty=0.5, frequency_penalty=0.25,
                            logprobs=5)
    got = processed_logprobs(logits, params, output_ids=[2, 2, 2, 4], prompt_ids=[0, 0])
    expected = logits.astype(np.float64) - [0, 0, 0.75 + 0.5, 0, 0.25 + 0.5]
    np.testing.assert_allclose(got, log_softmax(expected), rtol=1e-6)


def test_penalties_apply_to_greedy_choice() -> None:
    logits = np.array([[3.0, 2.9, 0.0]], dtype=np.float32)
    params = SamplingParams(temperature=0, frequency_penalty=0.5)
    assert Sampler().sample(logits, [row(params, output_ids=[0])])[0].token_ids == [1]


def test_min_tokens_masks_eos_and_stop_tokens() -> None:
    logits = np.array([[0.0, 0.0, 10.0, 9.0]], dtype=np.float32)
    sampler = Sampler(eos_token_ids=[2])
    params = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=(3,))
    assert sampler.sample(logits, [row(params, output_ids=[0])])[0].token_ids == [0]
    assert sampler.sample(logits, [row(params, output_ids=[0, 1])])[0].token_ids == [2]
    ignore = SamplingParams(temperature=0, min_tokens=2, ignore_eos=True)
    assert sampler.sample(logits, [row(ignore, output_ids=[0])])[0].token_ids == [2]


def test_seed_gives_same_tokens_alone_and_in_a_batch() -> None:
    vocab = 64
    params = SamplingParams(seed=1234, top_p=0.9, top_k=20, temperature=0.8)
    steps = 12
    logits = [random_logits(1, vocab, seed=100 + s)[0] for s in range(steps)]

    def run(batch_position: int, batch_size: int) -> list[int]:
        gen = make_generator(params.seed)
        others = [make_generator(None) for _ in range(batch_size)]
        tokens: list[int] = []
        for s in range(steps):
            batch = random_logits(batch_size, vocab, seed=s)
            batch[batch_position] = logits[s]
            rows = [SampleRow(SamplingParams(n=2), [], [], [g, g]) for g in others]
            rows[batch_position] = SampleRow(params, [], tokens, [gen])
            tokens.append(Sampler().sample(batch, rows)[batch_position].token_ids[0])
        return tokens

    alone = run(0, 1)
    assert run(3, 5) == alone
    assert run(0, 4) == alone
    assert len(set(alone)) > 2


def test_n_samples_from_one_row_use_independent_generators() -> None:
    logits = np.zeros((1, 1000), dtype=np.float32)
    params = SamplingParams(n=4, seed=9)
    result = Sampler().sample(logits, [row(params, num_samples=4)])[0]
    assert len(result.token_ids) == 4 and len(set(result.token_ids)) == 4
    # Each child's token is what its own generator draws, alone.
    for child, token in enumerate(result.token_ids):
        alone = Sampler().sample(logits, [SampleRow(params, [], [], [make_generator(9, child)])])
        assert alone[0].token_ids == [token]
    greedy = Sampler().sample(logits, [row(SamplingParams(temperature=0, n=3), num_samples=3)])
    assert greedy[0].token_ids == [0, 0, 0]


def test_make_generator_is_deterministic_per_seed_and_child() -> None:
    a, b, c = make_generator(5).random(3), make_generator(5).random(3), make_generator(5, 1)
    assert (a == b).all() and not (a == c.random(3)).all()
    assert not (make_generator(None).random(3) == make_generator(None).random(3)).all()


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_are_log_softmax_of_processed_logits_and_sorted(temperature: float) -> None:
    logits = random_logits(3, vocab=30)
    logits[1, [4, 9]] = 5.0  # a tie: lower id first
    params = SamplingParams(temperature=temperature, logprobs=5, repetition_penalty=1.3,
                            seed=3)
    rows = [row(params, output_ids=[4, 7], prompt_ids=[1]) for _ in range(3)]
    for i, result in enumerate(Sampler().sample(logits, rows)):
        processed = logits[i].astype(np.float64)
        for t in (1, 4, 7):
            processed[t] = processed[t] / 1.3 if processed[t] > 0 else processed[t] * 1.3
        ref = log_softmax(processed / (temperature or 1.0))
        assert result.logprobs is not None
        (entry,) = result.logprobs
        assert entry.token_id == result.token_ids[0]
        np.testing.assert_allclose(entry.logprob, ref[entry.token_id], rtol=1e-6)
        order = sorted(range(30), key=lambda t: (-ref[t], t))[:5]
        assert [t for t, _ in entry.top] == order
        np.testing.assert_allclose([lp for _, lp in entry.top], ref[order], rtol=1e-6)


def test_logprobs_none_and_zero() -> None:
    logits = random_logits(1)
    assert Sampler().sample(logits, [row(SamplingParams())])[0].logprobs is None
    result = Sampler().sample(logits, [row(SamplingParams(logprobs=0))])[0]
    assert result.logprobs is not None and result.logprobs[0].top == []


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="rows"):
        Sampler().sample(random_logits(2), [row(SamplingParams())])


def test_top_p_is_measured_after_top_k() -> None:
    logits = np.log(np.array([[0.4, 0.3, 0.15, 0.1, 0.05]]))
    proc.apply_top_k(logits, np.array([3]))
    # Renormalized over the 3 survivors, the first two hold 0.7 / 0.85 > 0.8.
    proc.apply_top_p(logits, np.array([0.8]))
    assert np.flatnonzero(np.isfinite(logits[0])).tolist() == [0, 1]


def test_sampling_package_imports_no_torch() -> None:
    code = ("import sys, trtkv.runtime.sampling; "
            "sys.exit(any(m in sys.modules for m in ('torch', 'onnxruntime', 'tensorrt')))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_extreme_parameters_never_leave_a_row_without_a_token() -> None:
    """Found by fuzzing the server: temperature 5e-324 overflowed logits to inf - inf = NaN and
    the sampler's assertion stopped the engine for every request."""
    import numpy as np

    from trtkv.runtime.sampling import Sampler, SampleRow, SamplingParams, make_generator

    logits = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32)
    rows = [SampleRow(SamplingParams(temperature=5e-324, seed=1), [1], [], [make_generator(1)]),
            SampleRow(SamplingParams(temperature=1.0, repetition_penalty=1e-300, seed=1), [1, 2, 3], [4],
                      [make_generator(1)]),
            SampleRow(SamplingParams(temperature=0.0, repetition_penalty=1e-300), [1, 2, 3], [4], [make_generator(1)])]
    results = Sampler([0]).sample(logits, rows)
    assert results[0].token_ids == [int(np.argmax(logits[0]))]  # below 1e-5: greedy
    boosted = {t for t in (1, 2, 3, 4) if logits[1, t] > 0}  # a penalty near 0 makes them +inf
    assert results[1].token_ids[0] in (boosted or set(range(50)))
    assert 0 <= results[2].token_ids[0] < 50


def test_plain_greedy_fast_path_picks_what_the_full_pipeline_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain greedy rows skip the float64 pipeline (argmax of the raw logits); on ties, +inf,
    -inf rows and NaNs the tokens are the full pipeline's (logprobs=0 forces that path)."""
    from trtkv.runtime.sampling import sampler as sampler_mod

    logits = random_logits(7, vocab=64, seed=3)
    logits[1, [5, 9, 40]] = logits[1].max() + 1  # a three-way tie: the lowest id
    logits[2, [7, 30]] = np.inf  # two +inf: the first
    logits[3] = -np.inf
    full_rows = [row(SamplingParams(temperature=0, logprobs=0)) for _ in range(7)]
    expected = [r.token_ids for r in Sampler().sample(logits, full_rows)]
    assert expected[1] == [5] and expected[2] == [7]
    calls: list[int] = []
    real = sampler_mod._argmax_rows
    monkeypatch.setattr(sampler_mod, "_argmax_rows", lambda x: calls.append(1) or real(x))
    plain = [r.token_ids for r in Sampler().sample(logits, [row(SamplingParams(temperature=0)) for _ in range(7)])]
    assert plain == expected and calls == [1]
    logits[4, [0, 11]] = np.nan  # NaNs are dropped by the full pipeline: not the argmax
    expected = [r.token_ids for r in Sampler().sample(logits, full_rows)]
    plain = [r.token_ids for r in Sampler().sample(logits, [row(SamplingParams(temperature=0)) for _ in range(7)])]
    assert plain == expected and expected[4] not in ([0], [11])
    # min_tokens masking EOS, or a penalty, takes the full path
    calls.clear()
    masked = Sampler(eos_token_ids=[int(np.argmax(logits[0]))]).sample(
        logits[:1], [row(SamplingParams(temperature=0, min_tokens=2))])
    assert masked[0].token_ids != [int(np.argmax(logits[0]))] and calls == []

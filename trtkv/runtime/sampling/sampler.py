"""`Sampler`: turns one step's logits into next tokens (and optional logprobs) per sequence.

Pipeline per row, in order: the grammar mask (structured output), min_tokens masking of EOS / stop token ids, repetition penalty,
presence / frequency penalties, then either argmax (temperature 0) or temperature scaling,
top-k, top-p, min-p and one random draw.

Randomness contract: every sequence owns its own ``np.random.Generator`` (see
`make_generator`), and exactly one ``generator.random()`` draw is consumed per sampled token
(inverse-CDF sampling over the filtered distribution in token-id order). Greedy rows consume
none. Hence a seeded request yields the same tokens whether it runs alone or in a busy batch.

Must not import torch, onnxruntime or tensorrt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from trtkv.runtime.sampling import processors as proc
from trtkv.runtime.sampling.guided import Guide
from trtkv.runtime.sampling.params import SamplingParams


def make_generator(seed: int | None, child_index: int = 0) -> np.random.Generator:
    """Create the random generator of one sequence.

    Args:
        seed: the request's seed; None draws fresh OS entropy (not reproducible).
        child_index: which of the request's ``n`` completions this generator serves; seeded
            children get independent streams derived from ``(seed, child_index)``.

    Returns:
        A PCG64 generator; same ``(seed, child_index)`` -> same stream.
    """
    if seed is None:
        return np.random.default_rng()
    seed_sequence = np.random.SeedSequence(seed, spawn_key=(child_index,))
    return np.random.Generator(np.random.PCG64(seed_sequence))


@dataclass(frozen=True)
class SampleRow:
    """What the sampler needs to know about one row of the logits.

    Attributes:
        params: the request's sampling parameters.
        prompt_ids: the prompt's token ids (for the repetition penalty).
        output_ids: tokens generated so far by this sequence (penalties, min_tokens).
        generators: one generator per token to draw from this row. Normally one (the
            sequence's own). When a request's prefill just finished and ``n > 1`` completions
            will be forked from this row, pass the ``n`` children's generators: each child's
            first token is drawn independently with its own generator.
        guide: the sequence's grammar state when the request asks for structured output;
            tokens it forbids are never drawn.
        draft: speculative decoding: draft tokens to verify. The row then spans
            ``1 + len(draft)`` rows of the logits (the target's distribution after the last
            token and after each draft token) and yields the accepted draft prefix plus one
            token (see `Sampler.sample`).
        draft_probs: float [len(draft), V]: the distribution each draft token was drawn
            from (a draft model sampling); None when each was chosen deterministically
            (n-gram lookup, greedy drafting): a point mass on it.
    """

    params: SamplingParams
    prompt_ids: Sequence[int]
    output_ids: Sequence[int]
    generators: Sequence[np.random.Generator]
    guide: Guide | None = None
    draft: Sequence[int] = ()
    draft_probs: npt.NDArray[np.floating] | None = None

    def __post_init__(self) -> None:
        assert len(self.generators) >= 1, "a SampleRow needs at least one generator"
        assert not self.draft or (len(self.generators) == 1 and self.guide is None), \
            "a draft is verified for one sequence without a grammar"

    @property
    def num_samples(self) -> int:
        """Tokens drawn from this row (``len(generators)``)."""
        return len(self.generators)

    @property
    def num_logit_rows(self) -> int:
        """Rows of the logits this row spans (``1 + len(draft)``)."""
        return 1 + len(self.draft)

    def at_draft_position(self, j: int) -> SampleRow:
        """The plain row of the target's ``j``-th logits row: the output so far is
        ``output_ids`` followed by ``draft[:j]`` (penalties and min_tokens see it)."""
        return SampleRow(self.params, self.prompt_ids, [*self.output_ids, *self.draft[:j]], self.generators)


class TokenLogprob(NamedTuple):
    """Logprobs reported for one sampled token.

    Attributes:
        token_id: the sampled token.
        logprob: its log-probability.
        top: the ``params.logprobs`` most likely (token_id, logprob) pairs, most likely first
            (ties: lower id first).
    """

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class SampleResult:
    """Tokens drawn from one row.

    Attributes:
        token_ids: ``row.num_samples`` token ids, in the order of ``row.generators``; for a
            row with a draft, the accepted draft tokens then the one drawn after them.
        logprobs: one entry per token when ``params.logprobs`` is set, else None.
    """

    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None


class Sampler:
    """Chooses next tokens for a batch of rows; stateless apart from the EOS ids.

    Args:
        eos_token_ids: the model's end-of-sequence ids; masked (with ``stop_token_ids``)
            until a sequence has ``min_tokens`` outputs, unless ``ignore_eos``.
    """

    def __init__(self, eos_token_ids: Sequence[int] = ()) -> None:
        self.eos_token_ids = tuple(eos_token_ids)

    def sample(self, logits: npt.NDArray[np.floating], rows: Sequence[SampleRow]
               ) -> list[SampleResult]:
        """Draw tokens for every row.

        Args:
            logits: float32 [R', V]: one row per sequence that samples this step, or
                ``row.num_logit_rows`` rows for a row with a speculative draft.
            rows: the rows, in the order of ``logits``.

        Returns:
            One result per row, in the order of ``rows``.

        Logprobs are the log-softmax of the logits after penalties and temperature (temperature
        1 for greedy rows) but before the top-k / top-p / min-p filters, so reported values are
        finite except for tokens masked by ``min_tokens``.

        A draft is verified against the target's distributions p_0..p_k (each after the same
        pipeline, with the draft's earlier tokens counted as output). Greedy: draft token j is
        kept while it is p_j's argmax, then p_j's argmax follows, so the tokens are exactly
        those of non-speculative greedy decoding. Sampled (rejection sampling, Leviathan et
        al. 2023 / Chen et al. 2023): draft token d_j drawn from q_j is kept with probability
        min(1, p_j(d_j) / q_j(d_j)) (one uniform draw); at the first rejection a token is drawn
        from normalize(max(p_j - q_j, 0)) and verification stops; if all are kept one more is
        drawn from p_k. Each emitted token is then distributed exactly as the target samples.
        """
        num_logit_rows = sum(r.num_logit_rows for r in rows)
        if logits.ndim != 2 or logits.shape[0] != num_logit_rows:
            raise ValueError(f"logits shape {logits.shape} does not match {len(rows)} rows "
                             f"({num_logit_rows} logits rows)")
        if num_logit_rows == len(rows) and all(_plain_argmax(r) for r in rows):
            best = _argmax_rows(logits)
            if best is not None:
                return [SampleResult([t] * r.num_samples) for t, r in zip(best, rows, strict=True)]
        plain = rows if num_logit_rows == len(rows) else [
            r.at_draft_position(j) if r.draft else r for r in rows for j in range(r.num_logit_rows)]
        work, filtered = self._prepare(logits, plain)
        results = []
        i = 0
        for row in rows:
            span = range(i, i + row.num_logit_rows)
            i += row.num_logit_rows
            if not row.draft:
                ids = self._choose(work, filtered, span.start, row)
                results.append(SampleResult(ids, _logprobs(work[span.start], ids, row.params.logprobs)))
                continue
            if row.params.is_greedy:
                ids = _verify_greedy(work[span.start:span.stop], row.draft)
            else:
                probs = np.stack([_probs(filtered[r]) for r in span])
                ids = _verify_sampled(probs, row.draft, row.draft_probs, row.generators[0])
            lps = None
            if row.params.logprobs is not None:
                lps = [_logprobs(work[span.start + j], [t], row.params.logprobs)[0]  # type: ignore[index]
                       for j, t in enumerate(ids)]
            results.append(SampleResult(ids, lps))
        return results

    def draw(self, logits: npt.NDArray[np.floating], rows: Sequence[SampleRow]
             ) -> list[tuple[int, npt.NDArray[np.float64] | None]]:
        """One token per row and the distribution it was drawn from (None: greedy, a point
        mass): what a draft model proposes with (`SampleRow.draft_probs`)."""
        work, filtered = self._prepare(logits, rows)
        out: list[tuple[int, npt.NDArray[np.float64] | None]] = []
        for i, row in enumerate(rows):
            if row.params.is_greedy:
                out.append((int(np.argmax(work[i])), None))
            else:
                probs = _probs(filtered[i])
                out.append((_draw_probs(probs, row.generators[0]), probs))
        return out

    def _choose(self, work: proc.FloatArray, filtered: dict[int, proc.FloatArray], i: int,
                row: SampleRow) -> list[int]:
        """Row ``i``'s tokens: the argmax (first maximum: the lowest id on ties), or one draw
        per generator."""
        if row.params.is_greedy:
            return [int(np.argmax(work[i]))] * row.num_samples
        return [_draw(filtered[i], g) for g in row.generators]

    def _prepare(self, logits: npt.NDArray[np.floating], rows: Sequence[SampleRow]
                 ) -> tuple[proc.FloatArray, dict[int, proc.FloatArray]]:
        """The pipeline up to the draw: ``work`` (float64 [R, V], penalized logits, divided by
        the temperature on sampled rows: the logprob base) and, per sampled row, its
        filtered logits (top-k / top-p / min-p applied)."""
        work = logits.astype(np.float64)
        sample_idx = [i for i, r in enumerate(rows) if not r.params.is_greedy]
        # Extreme penalties or temperatures overflow; one pass of _make_finite mends those rows.
        with np.errstate(over="ignore"):
            for i, row in enumerate(rows):
                self._process_row(work[i], row)
            if sample_idx:
                temps = np.array([rows[i].params.temperature for i in sample_idx])
                work[sample_idx] /= temps[:, None]
        _make_finite(work)
        if not sample_idx:
            return work, {}
        filtered = work[sample_idx]  # fancy indexing copies: `work` keeps unfiltered logits
        self._apply_filters(filtered, [rows[i] for i in sample_idx])
        return work, dict(zip(sample_idx, filtered, strict=True))

    def _process_row(self, row: proc.FloatArray, sample_row: SampleRow) -> None:
        params = sample_row.params
        if sample_row.guide is not None:
            sample_row.guide.apply(row)
        if len(sample_row.output_ids) < params.min_tokens:
            eos = () if params.ignore_eos else self.eos_token_ids
            proc.mask_tokens(row, (*eos, *params.stop_token_ids))
        if params.repetition_penalty != 1.0:
            seen = [*sample_row.prompt_ids, *sample_row.output_ids]
            proc.apply_repetition_penalty(row, seen, params.repetition_penalty)
        proc.apply_presence_frequency_penalty(
            row, sample_row.output_ids, params.presence_penalty, params.frequency_penalty
        )

    @staticmethod
    def _apply_filters(filtered: proc.FloatArray, rows: Sequence[SampleRow]) -> None:
        proc.apply_top_k(filtered, np.array([r.params.top_k for r in rows], dtype=np.int64))
        proc.apply_top_p(filtered, np.array([r.params.top_p for r in rows], dtype=np.float64))
        proc.apply_min_p(filtered, np.array([r.params.min_p for r in rows], dtype=np.float64))


def _plain_argmax(row: SampleRow) -> bool:
    """Whether ``row``'s token is the argmax of its raw logits: greedy, nothing that changes
    the logits first (grammar, min_tokens masking, penalties), no logprobs, no draft."""
    p = row.params
    return (p.is_greedy and row.guide is None and not row.draft and p.logprobs is None
            and p.repetition_penalty == 1.0 and p.presence_penalty == 0.0 and p.frequency_penalty == 0.0
            and (len(row.output_ids) >= p.min_tokens or (p.ignore_eos and not p.stop_token_ids)))


def _argmax_rows(logits: npt.NDArray[np.floating]) -> list[int] | None:
    """Each row's argmax taken on the logits as they are (float32: no float64 copy; the same
    first maximum, since widening keeps order), or None when a row's maximum is NaN (the full
    pipeline then removes NaNs first)."""
    best = np.argmax(logits, axis=1)
    if np.isnan(logits[np.arange(len(best)), best]).any():
        return None
    return best.tolist()  # type: ignore[no-any-return]


def _make_finite(logits: proc.FloatArray) -> None:
    """Rows free of NaN and +inf, in place, so every row keeps a drawable token.

    Extreme parameters (a temperature near 0, a repetition penalty near 0) overflow logits:
    +inf entries become the row's only candidates (equally likely), NaN ones are removed.
    One reduction finds the rows that need it (a NaN or +inf makes the row's max non-finite);
    only those are rewritten.
    """
    top = logits.max(axis=1)
    for r in np.flatnonzero(np.isnan(top) | (top == np.inf)).tolist():
        row = logits[r]
        np.nan_to_num(row, copy=False, nan=-np.inf, posinf=np.inf, neginf=-np.inf)
        if row.max() == np.inf:
            logits[r] = np.where(row == np.inf, 0.0, -np.inf)


def _draw(logits: proc.FloatArray, generator: np.random.Generator) -> int:
    """Inverse-CDF sample from one row of filtered logits with exactly one uniform draw.

    Args:
        logits: float64 [V], -inf for removed tokens; at least one finite entry.
        generator: consumed by exactly one ``random()`` call.

    Returns:
        The sampled token id; never a token of probability 0.
    """
    return _draw_probs(np.exp(logits - logits.max()), generator)


def _draw_probs(weights: proc.FloatArray, generator: np.random.Generator) -> int:
    """`_draw` from unnormalized non-negative weights (one ``random()`` call)."""
    u = generator.random()
    cdf = np.cumsum(weights)
    assert cdf[-1] > 0, "every token was filtered out"
    token = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    if token >= weights.shape[0]:  # u * total rounded up to total: take the last live token
        token = int(np.flatnonzero(weights > 0)[-1])
    return token


def _probs(filtered: proc.FloatArray) -> proc.FloatArray:
    """The distribution of one row of filtered logits (-inf: probability 0)."""
    weights = np.exp(filtered - filtered.max())
    return weights / weights.sum()  # type: ignore[no-any-return]


def _verify_greedy(work: proc.FloatArray, draft: Sequence[int]) -> list[int]:
    """Keep draft tokens while each is the argmax of its row, then that row's argmax."""
    best = np.argmax(work, axis=1).tolist()  # first maximum -> lowest id on ties, as unspeculated
    ids: list[int] = []
    for j, d in enumerate(draft):
        if best[j] != d:
            break
        ids.append(d)
    ids.append(best[len(ids)])
    return ids


def _verify_sampled(probs: proc.FloatArray, draft: Sequence[int],
                    draft_probs: npt.NDArray[np.floating] | None, generator: np.random.Generator) -> list[int]:
    """Rejection sampling of a draft against the target's ``probs`` [k+1, V] (see
    `Sampler.sample`); ``draft_probs`` None: each draft token had probability 1."""
    ids: list[int] = []
    for j, d in enumerate(draft):
        q_d = 1.0 if draft_probs is None else float(draft_probs[j, d])
        if generator.random() * q_d < probs[j, d]:  # accept with min(1, p/q)
            ids.append(d)
            continue
        residual = probs[j].copy()
        if draft_probs is None:
            residual[d] = 0.0
        else:
            residual = np.maximum(residual - draft_probs[j], 0.0)
        if not residual.sum() > 0:  # p <= q everywhere only when p == q: the draft was right
            residual = probs[j]
        ids.append(_draw_probs(residual, generator))
        return ids
    ids.append(_draw_probs(probs[len(draft)], generator))
    return ids


def _logprobs(scaled: proc.FloatArray, token_ids: list[int], num_top: int | None
              ) -> list[TokenLogprob] | None:
    if num_top is None:
        return None
    logprobs = proc.log_softmax(scaled[None, :])[0]
    top: list[tuple[int, float]] = []
    if num_top > 0:
        k = min(num_top, logprobs.shape[0])
        kth = -np.partition(-logprobs, k - 1)[k - 1]
        candidates = np.flatnonzero(logprobs >= kth)  # includes every tie with the k-th
        order = np.lexsort((candidates, -logprobs[candidates]))[:k]  # logprob desc, id asc
        top = [(int(candidates[j]), float(logprobs[candidates[j]])) for j in order]
    return [TokenLogprob(t, float(logprobs[t]), list(top)) for t in token_ids]

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
    """

    params: SamplingParams
    prompt_ids: Sequence[int]
    output_ids: Sequence[int]
    generators: Sequence[np.random.Generator]
    guide: Guide | None = None

    def __post_init__(self) -> None:
        assert len(self.generators) >= 1, "a SampleRow needs at least one generator"

    @property
    def num_samples(self) -> int:
        """Tokens drawn from this row (``len(generators)``)."""
        return len(self.generators)


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
        token_ids: ``row.num_samples`` token ids, in the order of ``row.generators``.
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
            logits: float32 [R, V], one row per sequence that samples this step.
            rows: R rows, in the order of ``logits``.

        Returns:
            R results, in the order of ``rows``.

        Logprobs are the log-softmax of the logits after penalties and temperature (temperature
        1 for greedy rows) but before the top-k / top-p / min-p filters, so reported values are
        finite except for tokens masked by ``min_tokens``.
        """
        if logits.ndim != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits shape {logits.shape} does not match {len(rows)} rows")
        work = logits.astype(np.float64)
        greedy_idx = [i for i, r in enumerate(rows) if r.params.is_greedy]
        sample_idx = [i for i, r in enumerate(rows) if not r.params.is_greedy]
        # From here on `work` holds the logprob base: penalized logits, and for sampled rows
        # also divided by the temperature. Extreme penalties or temperatures overflow; one
        # pass of _make_finite mends those rows.
        with np.errstate(over="ignore"):
            for i, row in enumerate(rows):
                self._process_row(work[i], row)
            if sample_idx:
                temps = np.array([rows[i].params.temperature for i in sample_idx])
                work[sample_idx] /= temps[:, None]
        _make_finite(work)
        token_ids: list[list[int]] = [[] for _ in rows]
        if greedy_idx:
            best = np.argmax(work[greedy_idx], axis=1)  # first maximum -> lowest id on ties
            for i, token in zip(greedy_idx, best.tolist(), strict=True):
                token_ids[i] = [token] * rows[i].num_samples
        if sample_idx:
            filtered = work[sample_idx]  # fancy indexing copies: `work` keeps unfiltered logits
            self._apply_filters(filtered, [rows[i] for i in sample_idx])
            for j, i in enumerate(sample_idx):
                token_ids[i] = [_draw(filtered[j], g) for g in rows[i].generators]
        return [
            SampleResult(ids, _logprobs(work[i], ids, row.params.logprobs))
            for i, (row, ids) in enumerate(zip(rows, token_ids, strict=True))
        ]

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
    u = generator.random()
    weights = np.exp(logits - logits.max())
    cdf = np.cumsum(weights)
    assert cdf[-1] > 0, "every token was filtered out"
    token = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    if token >= logits.shape[0]:  # u * total rounded up to total: take the last live token
        token = int(np.flatnonzero(weights > 0)[-1])
    return token


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

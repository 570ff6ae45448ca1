"""Logit processors: penalties, stop-token masking and the top-k / top-p / min-p filters.

In-place numpy functions on float64 logits; the `Sampler` chains them. Filters mark removed
tokens with ``-inf`` and keep every token tied with the last kept one, so their result never depends
on the order of equal logits. Must not import torch, onnxruntime or tensorrt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def apply_repetition_penalty(row: FloatArray, seen_ids: Sequence[int], penalty: float) -> None:
    """Penalize every token already seen, in place (CTRL / Hugging Face convention).

    Args:
        row: float64 [V] logits of one sequence.
        seen_ids: prompt and output token ids (duplicates allowed).
        penalty: > 0; positive logits are divided by it, negative ones multiplied.
    """
    if penalty == 1.0 or len(seen_ids) == 0:
        return
    ids = np.unique(np.asarray(seen_ids, dtype=np.int64))
    values = row[ids]
    row[ids] = np.where(values > 0, values / penalty, values * penalty)


def apply_presence_frequency_penalty(row: FloatArray, output_ids: Sequence[int],
                                     presence: float, frequency: float) -> None:
    """Subtract OpenAI-style penalties in place: ``frequency * count + presence * (count > 0)``.

    Args:
        row: float64 [V] logits of one sequence.
        output_ids: the sequence's generated tokens so far (the prompt does not count).
        presence: subtracted once from each token present in ``output_ids``.
        frequency: subtracted once per occurrence in ``output_ids``.
    """
    if (presence == 0.0 and frequency == 0.0) or len(output_ids) == 0:
        return
    ids, counts = np.unique(np.asarray(output_ids, dtype=np.int64), return_counts=True)
    row[ids] -= frequency * counts + presence


def mask_tokens(row: FloatArray, token_ids: Sequence[int]) -> None:
    """Make ``token_ids`` impossible (logit ``-inf``) in place; ids outside the row are ignored.

    Args:
        row: float64 [V] logits of one sequence.
        token_ids: ids to forbid, e.g. EOS and stop tokens before ``min_tokens`` outputs exist.
    """
    ids = np.asarray([t for t in token_ids if 0 <= t < row.shape[0]], dtype=np.int64)
    row[ids] = -np.inf


def apply_top_k(logits: FloatArray, top_k: npt.NDArray[np.int64]) -> None:
    """Keep each row's ``top_k`` largest logits (and ties with the k-th), in place.

    Args:
        logits: float64 [R, V].
        top_k: int64 [R]; 0 (or >= V) leaves the row unchanged.
    """
    for r in np.flatnonzero((top_k > 0) & (top_k < logits.shape[1])).tolist():
        k = int(top_k[r])
        kth = -np.partition(-logits[r], k - 1)[k - 1]  # O(V), no full sort
        logits[r, logits[r] < kth] = -np.inf


def log_softmax(logits: FloatArray) -> FloatArray:
    """Row-wise log-softmax of float64 [R, V] logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def apply_top_p(logits: FloatArray, top_p: FloatArray) -> None:
    """Nucleus filter, in place: keep the smallest top set whose probability reaches ``top_p``.

    A token is kept when the probability of the strictly more likely tokens (in sorted order)
    is below ``top_p``; so the most likely token always survives, and tokens tied with the last
    kept one survive too.

    Args:
        logits: float64 [R, V].
        top_p: float64 [R] in (0, 1]; 1 leaves the row unchanged.
    """
    for r in np.flatnonzero(top_p < 1.0).tolist():
        # Only live tokens take part: after top-k that is a short list, so the sort is cheap.
        live = np.flatnonzero(logits[r] > -np.inf)
        probs = np.exp(logits[r, live] - logits[r, live].max())
        probs /= probs.sum()
        sorted_desc = -np.sort(-probs)
        mass_before = np.cumsum(sorted_desc) - sorted_desc
        num_kept = max(int((mass_before < top_p[r]).sum()), 1)
        logits[r, live[probs < sorted_desc[num_kept - 1]]] = -np.inf


def apply_min_p(logits: FloatArray, min_p: FloatArray) -> None:
    """Drop tokens whose probability is below ``min_p`` times the row's top one, in place.

    Args:
        logits: float64 [R, V].
        min_p: float64 [R] in [0, 1]; 0 leaves the row unchanged.
    """
    active = np.flatnonzero(min_p > 0.0)
    if active.size == 0:
        return
    sub = logits[active]
    # p_i / p_max = exp(l_i - l_max), so the test needs no normalization.
    ratio = np.exp(sub - sub.max(axis=1, keepdims=True))
    logits[active] = np.where(ratio < min_p[active, None], -np.inf, sub)

"""`NgramProposer`: prompt lookup decoding, drafts copied from the sequence's own history.

The last n tokens (n from ``prompt_lookup_max`` down to ``prompt_lookup_min``) are looked
up earlier in the prompt and output; the tokens that followed the latest earlier occurrence
of the longest matching suffix are the draft. No model runs, so a draft costs only the
target's verification; it pays off where output repeats its context (code editing,
quoting a document, RAG, structured rewrites).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trtkv.runtime.spec.base import Draft, DraftSlot


class NgramProposer:
    """See module docstring. Stateless."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n

    def propose(self, slots: Sequence[DraftSlot]) -> dict[int, Draft]:
        drafts = {}
        for slot in slots:
            if slot.max_tokens > 0:
                found = lookup(slot.token_ids, self.min_n, self.max_n, slot.max_tokens)
                if found:
                    drafts[slot.seq_id] = Draft(found)
        return drafts

    def close(self) -> None:
        pass


def lookup(token_ids: Sequence[int], min_n: int, max_n: int, k: int) -> tuple[int, ...]:
    """Up to ``k`` tokens that followed an earlier occurrence of the longest suffix of
    ``token_ids`` of ``min_n`` .. ``max_n`` tokens (the latest one followed by ``k`` tokens,
    else the earliest); () when none occurs.

    Cost O(L + c * max_n) for L tokens and c earlier occurrences of the last token.
    """
    length = len(token_ids)
    if length < min_n + 1:
        return ()
    arr = np.asarray(token_ids, dtype=np.int64)
    ends = np.flatnonzero(arr[: length - 1] == arr[-1])  # candidate match ends, before the suffix's own
    if ends.size == 0:
        return ()
    matched = np.ones(ends.size, dtype=np.int64)  # suffix length matched at each candidate end
    alive = np.ones(ends.size, dtype=bool)
    for m in range(1, min(max_n, length - 1)):
        alive &= ends >= m
        if not alive.any():
            break
        idx = np.where(alive, ends - m, 0)
        alive &= arr[idx] == arr[length - 1 - m]
        matched += alive
    best = int(matched.max())
    if best < min_n:
        return ()
    longest = ends[matched == best]
    full = longest[length - 1 - longest >= k]  # occurrences followed by k tokens
    end = int(full[-1] if full.size else longest[0])  # the latest such, else the longest continuation
    return tuple(arr[end + 1: end + 1 + k].tolist())

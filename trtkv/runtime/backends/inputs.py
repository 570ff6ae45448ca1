"""StepPlan -> the op inputs of one forward pass (numpy, backend-independent)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trtkv.runtime.plan import StepPlan


@dataclass(frozen=True)
class StepInputs:
    """Graph inputs of one step (names as in `trtkv.manifest.INPUT_NAMES`).

    Attributes:
        input_ids: int64 [T] new tokens of all sequences, packed in plan order.
        positions: int64 [T] position of each new token in its sequence.
        query_start_loc: int32 [S+1] cumulative new-token offsets.
        context_lens: int32 [S] tokens of each sequence already in the pool.
        block_tables: int32 [S, M] block ids, padded with 0 (never read past a sequence's length).
        slot_mapping: int64 [T] pool slot (block * B + offset) of each new token.
        logits_indices: int64 [R] rows of the tokens whose logits are wanted: the last token of
            each sampling sequence (its last ``1 + num_draft`` with a speculative draft),
            every token of an ``all_logits`` one, in plan order.
    """

    input_ids: np.ndarray
    positions: np.ndarray
    query_start_loc: np.ndarray
    context_lens: np.ndarray
    block_tables: np.ndarray
    slot_mapping: np.ndarray
    logits_indices: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(self.__dict__)


def build_step_inputs(plan: StepPlan, block_size: int) -> StepInputs:
    """Pack a plan's sequences into op inputs. Cost O(T + S*M)."""
    seqs = plan.seqs
    num_seqs = len(seqs)
    lens = np.fromiter((s.num_tokens for s in seqs), dtype=np.int64, count=num_seqs)
    qsl = np.zeros(num_seqs + 1, dtype=np.int64)
    np.cumsum(lens, out=qsl[1:])
    width = max((len(s.block_ids) for s in seqs), default=1) or 1
    tables = np.zeros((num_seqs, width), dtype=np.int32)
    for i, s in enumerate(seqs):
        tables[i, : len(s.block_ids)] = s.block_ids
    starts = np.fromiter((s.start_pos for s in seqs), dtype=np.int64, count=num_seqs)
    seq_of_token = np.repeat(np.arange(num_seqs), lens)
    positions = starts[seq_of_token] + (np.arange(int(qsl[-1])) - qsl[:-1][seq_of_token])
    blocks = tables[seq_of_token, positions // block_size].astype(np.int64)
    input_ids = np.fromiter(
        (t for s in seqs for t in s.token_ids), dtype=np.int64, count=int(qsl[-1])
    )
    rows: list[np.ndarray] = []
    for i, s in enumerate(seqs):
        if s.all_logits:
            rows.append(np.arange(qsl[i], qsl[i + 1]))
        elif s.sample:
            rows.append(qsl[i + 1 : i + 2] - 1 if not s.num_draft else np.arange(qsl[i + 1] - 1 - s.num_draft, qsl[i + 1]))
    return StepInputs(
        input_ids=input_ids,
        positions=positions,
        query_start_loc=qsl.astype(np.int32),
        context_lens=starts.astype(np.int32),
        block_tables=tables,
        slot_mapping=blocks * block_size + positions % block_size,
        logits_indices=np.concatenate(rows) if rows else np.zeros(0, np.int64),
    )

"""The contract between the scheduler and the model backends: plain data, no tensors.

The scheduler produces one `StepPlan` per engine step; a backend (`trtkv.runtime.backends`)
turns it into op inputs (input_ids, positions, query_start_loc, context_lens, block_tables,
slot_mapping) and returns logits for the sequences that sample.

Must not import torch, onnx, onnxruntime or tensorrt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

FinishReason = Literal["stop", "length"]
TokenFinish = tuple[FinishReason, int | None]
"""Why a sequence ended on a token: ("stop", the stop token id) or ("length", None)."""


@dataclass(frozen=True, slots=True)
class StopRule:
    """The token-id stop rule of one request, applied by the scheduler after each sampled
    token (text stops, stop strings, belong to the engine's output side).

    A sequence stops with ``"stop"`` on a stop id (EOS unless ``ignore_eos``, or one of the
    request's ``stop_token_ids``) once more than ``min_tokens`` tokens were generated, and
    with ``"length"`` on its ``max_new_tokens``-th token. The scheduler admits no request
    whose prompt + ``max_new_tokens`` exceeds ``max_model_len``, so that bound needs no
    check of its own.
    """

    stop_ids: frozenset[int] = frozenset()
    min_tokens: int = 0

    @classmethod
    def of(cls, stop_token_ids: Iterable[int], eos_token_ids: Iterable[int], *, ignore_eos: bool = False,
           min_tokens: int = 0) -> StopRule:
        ids = frozenset(stop_token_ids) | (frozenset() if ignore_eos else frozenset(eos_token_ids))
        return cls(ids, min_tokens)

    def check(self, token_id: int, num_output_tokens: int, max_new_tokens: int) -> TokenFinish | None:
        """The finish after ``token_id``, the ``num_output_tokens``-th generated token; None
        while the sequence goes on."""
        if token_id in self.stop_ids and num_output_tokens > self.min_tokens:
            return ("stop", token_id)
        if num_output_tokens >= max_new_tokens:
            return ("length", None)
        return None


NO_STOP_IDS = StopRule()


class ScheduledSeq(NamedTuple):
    """One sequence's share of a step (immutable; a NamedTuple because the scheduler builds
    one per running sequence per step, and it constructs 3.5x faster than a frozen dataclass).

    Attributes:
        seq_id: unique id of the sequence (a request with n > 1 owns n sequences).
        token_ids: the tokens whose hidden states and K/V this step computes: a prefill chunk,
            or the single last sampled token when decoding.
        start_pos: position of ``token_ids[0]``; equals the number of this sequence's tokens
            whose K/V are already in the pool (its context length).
        block_ids: the sequence's block table; covers ``start_pos + len(token_ids)`` tokens.
        sample: whether the step yields logits for the last of ``token_ids`` (a decode step,
            or the last chunk of a prefill).
        all_logits: yield logits for every token of ``token_ids`` instead (scoring,
            perplexity); the scheduler never sets it.
        request_id: the request the sequence belongs to (backends ignore it).
        num_draft: speculative decoding: the last ``num_draft`` of ``token_ids`` are draft
            tokens to verify (``token_ids`` is the last sampled token then the draft), and
            a sampling sequence yields logits for its last ``1 + num_draft`` tokens.
    """

    seq_id: int
    token_ids: tuple[int, ...]
    start_pos: int
    block_ids: tuple[int, ...]
    sample: bool
    all_logits: bool = False
    request_id: str = ""
    num_draft: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class SeqUpdate(NamedTuple):
    """What one sequence gained in a step (`Scheduler.update`'s result, one per sampled
    token).

    Attributes:
        seq_id: the sequence.
        request_id: its request.
        token_id: the token it gained.
        parent_seq_id: for a fork made this step (parallel sampling, n > 1), the sequence
            it was forked from (it shares the parent's blocks and starts from its state
            before ``token_id``s of this step); None otherwise.
        sample_index: which of the row's draws this token is (0: the sequence's own; i: the
            i-th fork's).
        num_cached_tokens: prompt tokens the prefix cache supplied (not computed).
        finish_reason: set when the token ended the sequence by its `StopRule`; the
            scheduler has then freed it (the engine calls `Scheduler.finish` only for
            stops it decides on text).
        stop_reason: the stop token id for ``finish_reason == "stop"``.
    """

    seq_id: int
    request_id: str
    token_id: int
    parent_seq_id: int | None
    sample_index: int
    num_cached_tokens: int
    finish_reason: FinishReason | None = None
    stop_reason: int | None = None


@dataclass(frozen=True)
class StepPlan:
    """Everything a backend must do for one step, in order.

    Attributes:
        seqs: sequences computed this step, decodes first then prefill chunks.
        swap_out: (device_block, host_block) copies to host memory, done first.
        swap_in: (host_block, device_block) copies from host memory, done after swap_out.
        block_copies: (src, dst) device block copies (copy-on-write), done after swap_in and
            before the forward pass. A destination may be a block that is also a source in the
            same list (freed by a preemption this step): backends read every source before
            writing any destination (gather, then scatter).
    """

    seqs: tuple[ScheduledSeq, ...] = ()
    swap_out: tuple[tuple[int, int], ...] = ()
    swap_in: tuple[tuple[int, int], ...] = ()
    block_copies: tuple[tuple[int, int], ...] = ()
    preempted_seq_ids: tuple[int, ...] = field(default=())

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.seqs)

    @property
    def is_empty(self) -> bool:
        return not self.seqs and not self.swap_out and not self.swap_in and not self.block_copies

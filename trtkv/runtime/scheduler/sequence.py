"""A sequence's scheduling state (internal, mutable) and its read-only view for the engine.

Owns: the token list (prompt + generated), how many tokens have K/V in the pool
(``num_computed``), status, priority and the sort key used for admission and preemption.
Must not import torch or tensorrt.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from trtkv.runtime.plan import NO_STOP_IDS, StopRule

SortKey = tuple[int, float, int, int]
"""(class, time, arrival order, seq_id): smaller sorts first and is served first. Class and
time come from the scheduling policy (`policy.SchedulingPolicy.rank`): (priority,
arrival_time) by default."""


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    """Queued for admission: new, or preempted by recompute (holds no blocks)."""
    RUNNING = "running"
    """Holds device blocks and is scheduled each step it fits."""
    SWAPPED = "swapped"
    """Preempted by swap: its blocks are in host memory until swapped back in."""
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(eq=False, slots=True)
class SeqState:
    """Scheduler-internal state of one sequence; the engine sees `SeqView` snapshots."""

    seq_id: int
    request_id: str
    token_ids: list[int]
    """Prompt followed by the generated tokens."""
    prompt_len: int
    max_new_tokens: int
    priority: int
    key: SortKey
    cache_salt: str | None = None
    stop: StopRule = NO_STOP_IDS
    """When a sampled token ends it (`StopRule.check`, applied in `Scheduler.update`)."""
    status: SeqStatus = SeqStatus.WAITING
    num_computed: int = 0
    """Tokens whose K/V are in the pool (equals the KV manager's slot count between steps)."""
    num_cached_tokens: int = 0
    """Prompt tokens found in the prefix cache at the last admission."""
    num_preemptions: int = 0
    prefill_start: int = 0
    """``num_computed`` when the current prefill began, to count partial chunks."""
    num_samples: int = 1
    """Sequences this one becomes when its prompt is done (a request's n; 1 once forked):
    admission reserves that many of max_num_seqs, so forks never exceed it."""
    held: bool = False
    """Sampled, but its next token is decided later (`Scheduler.extend`): a beam waiting for
    the other beams of its request. Running, it computes nothing until extended."""
    block_keys: list[bytes] = field(default_factory=list)
    """Prefix-cache keys of its full blocks, hashed once at its first admission attempt
    (empty with caching off); tokens are only appended, so the keys stay valid."""

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def draft_room(self) -> int:
        """Draft tokens a decode may verify: its remaining max_new_tokens less the one token
        the target adds."""
        return self.max_new_tokens - (len(self.token_ids) - self.prompt_len) - 1

    @property
    def is_decoding(self) -> bool:
        return len(self.token_ids) - self.num_computed == 1 and self.num_computed >= self.prompt_len

    def view(self) -> SeqView:
        return SeqView(
            seq_id=self.seq_id,
            request_id=self.request_id,
            prompt_ids=tuple(self.token_ids[: self.prompt_len]),
            output_ids=tuple(self.token_ids[self.prompt_len :]),
            max_new_tokens=self.max_new_tokens,
            num_computed=self.num_computed,
            num_cached_tokens=self.num_cached_tokens,
            status=self.status,
            priority=self.priority,
            num_preemptions=self.num_preemptions,
        )


@dataclass(frozen=True)
class SeqView:
    """A read-only snapshot of a sequence, taken when `Scheduler.get_seq` is called."""

    seq_id: int
    request_id: str
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]
    max_new_tokens: int
    num_computed: int
    num_cached_tokens: int
    status: SeqStatus
    priority: int
    num_preemptions: int = field(default=0)

    @property
    def has_reached_max_new_tokens(self) -> bool:
        return len(self.output_ids) >= self.max_new_tokens

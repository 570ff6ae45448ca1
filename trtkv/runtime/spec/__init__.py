"""Speculative decoding: proposers of draft tokens the target model verifies in one step.

Module map:
    config   `SpeculativeConfig` (method, tokens per step, the draft model, n-gram sizes)
    ngram    `NgramProposer`: prompt lookup, no extra model
    draft    `DraftModelProposer`: a smaller trtkv export with its own backend and KV pool
    base     `DraftSlot` (what a proposer is asked), `Draft` (what it answers), `create_proposer`

The scheduler fits drafts into the step (token budget, KV blocks) and rolls back what the
target rejects (`Scheduler.update`); the `Sampler` verifies (greedy or rejection sampling).
"""

from __future__ import annotations

from trtkv.runtime.spec.base import Draft, DraftSlot, Proposer, create_proposer
from trtkv.runtime.spec.config import SPECULATIVE_METHODS, SpeculativeConfig

__all__ = ["SPECULATIVE_METHODS", "Draft", "DraftSlot", "Proposer", "SpeculativeConfig", "create_proposer"]

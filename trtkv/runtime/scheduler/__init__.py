"""Continuous batching over the paged KV cache. Pure Python.

Module map:
    config.py: `SchedulerConfig` (frozen; field help feeds the CLI).
    scheduler.py: `Scheduler`, the facade: requests in, one `StepPlan` per step (decodes,
        prefill chunks, preemption), `update` (tokens, forks, prefix publishing).
    admission.py: `Admission`, the stage that brings waiting / swapped sequences in.
    step.py: `StepBuilder`, one step's budget, scheduled sequences and block moves.
    sequence.py: `Sequence` (internal state), `SeqView` (read-only snapshot), `SeqStatus`.
    queue.py: `SeqQueue`, the priority queue of waiting / swapped sequences.
    policy.py: `SchedulingPolicy` (fcfs, priority, short-first with aging: the sort key),
        the long-prefill throttle predicate.
    registry.py: `SeqRegistry`, which set (waiting, running, swapped) each sequence is in.
    inflight.py: `InflightBlocks`, block keys running prefills have not cached yet.
    stats.py: `Counters` (typed running counters), `SchedulerStats` (their snapshot).

Must not import torch, onnx, onnxruntime or tensorrt.
"""

from __future__ import annotations

from trtkv.runtime.scheduler.config import PreemptionMode, SchedulerConfig, field_help
from trtkv.runtime.scheduler.scheduler import Scheduler
from trtkv.runtime.scheduler.sequence import SeqStatus, SeqView
from trtkv.runtime.scheduler.stats import REJECT_REASONS, SchedulerStats

__all__ = [
    "REJECT_REASONS",
    "PreemptionMode",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerStats",
    "SeqStatus",
    "SeqView",
    "field_help",
]

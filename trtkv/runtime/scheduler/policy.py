"""Scheduling policies: the order waiting requests are admitted in, as a time-invariant key.

Owns: `SchedulingPolicy` (the sort key a new sequence gets) and the long-prompt throttle
predicate. The key is fixed when a request arrives, so the waiting queue stays a plain heap
(O(log n) per push/pop, no re-sorting per step) even though short-first ages requests.
Must not import torch or tensorrt.

Policies (``SchedulerConfig.scheduling_policy``); smaller keys are admitted first, and the
running set is kept in the same order, so the preemption victim is the one ranked last:
    priority: (priority, arrival): lower numbers first, ties to the earlier arrival (default).
    fcfs: arrival order only; ``priority`` is ignored.
    short-first: lowest aged expected cost first; ``priority`` is ignored. A request's
        expected cost is ``cost = prompt tokens + max_new_tokens`` (taken at arrival, when no
        token is computed yet, so it is all prompt tokens still to compute plus the requested
        output). Its effective cost decreases by ``aging_tokens_per_s`` per second waited:
        at time t it is ``cost - aging_tokens_per_s * (t - arrival)``. Comparing two requests
        at any common instant t, the t terms cancel, so ordering by the constant
        ``arrival + cost / aging_tokens_per_s`` (the request's *virtual arrival*) gives the
        same order at every instant.

Aging bound (short-first): a request R is never admitted after a request that arrived more
than ``cost_R / aging_tokens_per_s`` seconds after R (its virtual arrival is later than R's).
So from ``arrival_R + cost_R / aging_tokens_per_s`` on, R is served FCFS ahead of every newer
request, however short; since ``cost <= max_model_len``, no request is overtaken by one
arriving more than ``max_model_len / aging_tokens_per_s`` seconds after it. Like every policy,
the order is subject to the scheduler's deferrals (in-flight prefix de-duplication and the
long-prefill throttle below), which let requests behind a deferred one go first.

Long-prefill throttle: with ``long_prefill_threshold > 0`` a sequence whose prompt is longer
than the threshold is a *long prefill* while it is running and not yet decoding; at most
``max_long_prefills`` may be at once. A long request that would exceed it waits (deferred,
not rejected) and admission goes on with the requests behind it, so short ones keep flowing.
"""

from __future__ import annotations

from typing import Literal

from trtkv.runtime.scheduler.sequence import SeqState

PolicyName = Literal["fcfs", "priority", "short-first"]
POLICIES: tuple[str, ...] = ("fcfs", "priority", "short-first")


class SchedulingPolicy:
    """The first two fields of a new sequence's `SortKey` under one policy.

    Args:
        name: ``fcfs``, ``priority`` or ``short-first``.
        aging_tokens_per_s: short-first only: how fast a waiting request's cost decreases (> 0).
    """

    def __init__(self, name: str, aging_tokens_per_s: float) -> None:
        assert name in POLICIES, f"unknown policy {name!r} (SchedulerConfig validates it)"
        self.name = name
        self._seconds_per_token = 1.0 / aging_tokens_per_s

    def rank(self, priority: int, arrival_time: float, prompt_len: int,
             max_new_tokens: int) -> tuple[int, float]:
        """(class, time) ordering a new request; arrival order and seq id break ties."""
        if self.name == "priority":
            return priority, arrival_time
        if self.name == "fcfs":
            return 0, arrival_time
        return 0, arrival_time + (prompt_len + max_new_tokens) * self._seconds_per_token


def is_long_prefill(seq: SeqState, threshold: int) -> bool:
    """Whether ``seq`` counts against ``max_long_prefills`` once running (threshold > 0)."""
    return seq.prompt_len > threshold and not seq.is_decoding

"""Engine metrics: latency histograms and counters, ready for a Prometheus exporter.

Owns no policy: the engine records, exporters read `EngineMetrics.snapshot()`. Histograms keep
fixed buckets (for Prometheus) and a bounded window of recent samples (for P50/P95/P99).
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Seconds; covers sub-millisecond ITL on GPUs to minutes-long requests on CPU.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0,
)


@dataclass
class Histogram:
    """Cumulative-bucket histogram plus a window of recent samples for percentiles."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    window: int = 10_000
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0
    recent: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)
        self.recent = deque(maxlen=self.window)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1
        self.recent.append(value)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of recent samples; NaN when empty."""
        if not self.recent:
            return float("nan")
        return float(np.percentile(np.fromiter(self.recent, dtype=np.float64), q))

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count, "sum": self.total, "p50": self.percentile(50),
            "p95": self.percentile(95), "p99": self.percentile(99),
        }

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, the last bound +inf — Prometheus `le`."""
        acc, out = 0, []
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            acc += n
            out.append((bound, acc))
        return out


HISTOGRAMS = {
    "time_to_first_token_seconds": "time from arrival to the first output token",
    "time_per_output_token_seconds": "mean time per output token after the first, per request",
    "inter_token_latency_seconds": "time between consecutive output tokens",
    "e2e_request_latency_seconds": "time from arrival to finish",
    "prefill_step_seconds": "duration of steps that computed prefill tokens",
    "decode_step_seconds": "duration of steps that computed decode tokens only",
    "queue_time_seconds": "time from arrival to the first scheduled step",
}


class EngineMetrics:
    """Counters and histograms the engine updates."""

    def __init__(self) -> None:
        self.histograms = {name: Histogram() for name in HISTOGRAMS}
        self.counters: Counter[str] = Counter()
        self.finished_by_reason: Counter[str] = Counter()
        self.rejected_by_reason: Counter[str] = Counter()

    def observe(self, name: str, value: float) -> None:
        self.histograms[name].observe(value)

    def snapshot(self, scheduler_stats: Any = None) -> dict[str, Any]:
        """Plain-data view of every metric (and the scheduler's stats, when given)."""
        snap: dict[str, Any] = {
            "counters": dict(self.counters),
            "finished_by_reason": dict(self.finished_by_reason),
            "rejected_by_reason": dict(self.rejected_by_reason),
            "histograms": {k: h.summary() for k, h in self.histograms.items()},
        }
        if scheduler_stats is not None:
            snap["scheduler"] = _asdict(scheduler_stats)
        return snap


def speculative_stats(counters: Mapping[str, int]) -> dict[str, float] | None:
    """Acceptance rate and mean accepted length from the engine's counters; None when no
    draft was verified yet."""
    drafts = counters.get("spec_decode_num_drafts", 0)
    if not drafts:
        return None
    accepted = counters.get("spec_decode_num_accepted_tokens", 0)
    return {"acceptance_rate": accepted / max(counters.get("spec_decode_num_draft_tokens", 0), 1),
            "mean_accepted_length": (accepted + drafts) / drafts}


def _asdict(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        out = {k: _asdict(getattr(obj, k)) for k in obj.__dataclass_fields__}
        for prop in ("num_preemptions", "num_rejected", "prefix_hit_rate"):
            if hasattr(type(obj), prop):
                out[prop] = _asdict(getattr(obj, prop))
        return out
    return obj

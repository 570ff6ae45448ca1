"""Engine and server metrics in the Prometheus text exposition format (version 0.0.4).

Owns metric names and rendering only; the values come from `Engine.stats()`, the engine's
histograms and the server's own counters. Every name starts with ``trtkv_``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from trtkv.runtime.engine import Engine
from trtkv.runtime.metrics import HISTOGRAMS
from trtkv.runtime.scheduler.stats import REJECT_REASONS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Mapping[str, str]


def collect(engine: Engine) -> dict[str, Any]:
    """Everything `render` needs, read in one go (call it between steps)."""
    return {
        "stats": engine.stats(),
        "buckets": {name: h.cumulative() for name, h in engine.metrics.histograms.items()},
    }


def render(snapshot: Mapping[str, Any], server: Mapping[str, Any]) -> str:
    """The /metrics page.

    Args:
        snapshot: `collect(engine)`.
        server: ``{"http_requests": {(endpoint, status): n}, "client_disconnects": n,
            "active_streams": n}``.
    """
    out = _Writer()
    stats = snapshot["stats"]
    sched = stats.get("scheduler", {})
    kv = sched.get("kv", {})
    out.gauge("kv_blocks_total", "KV blocks in the device pool", kv.get("num_total", 0))
    out.gauge("kv_blocks_used", "KV blocks held by sequences", kv.get("num_used", 0))
    out.gauge("kv_blocks_free", "KV blocks free for allocation", kv.get("num_free", 0))
    out.gauge("kv_usage_ratio", "fraction of device KV blocks in use",
              kv["num_used"] / kv["num_total"] if kv.get("num_total") else 0.0)
    out.gauge("kv_host_blocks_used", "KV blocks held in the host (swap) tier", kv.get("num_host_used", 0))
    out.gauge("kv_host_blocks_free", "free KV blocks in the host (swap) tier", kv.get("num_host_free", 0))
    out.gauge("prefix_cache_blocks", "device blocks carrying a prefix-cache key", kv.get("num_cached", 0))
    out.counter("prefix_cache_evictions", "cached blocks whose key was dropped on reuse",
                kv.get("num_evictions", 0))
    out.counter("prefix_cache_query_tokens", "prompt tokens looked up in the prefix cache",
                sched.get("num_prefix_query_tokens", 0))
    out.counter("prefix_cache_hit_tokens", "prompt tokens served from the prefix cache",
                sched.get("num_prefix_hit_tokens", 0))
    out.gauge("requests_waiting", "requests waiting to be scheduled", sched.get("num_waiting", 0))
    out.gauge("requests_running", "sequences running", sched.get("num_running", 0))
    out.gauge("requests_swapped", "sequences swapped out to host memory", sched.get("num_swapped", 0))
    out.counter("preemptions", "sequences preempted for KV space, by mode", [
        ({"mode": "recompute"}, sched.get("num_preemptions_recompute", 0)),
        ({"mode": "swap"}, sched.get("num_preemptions_swap", 0)),
    ])
    rejected = stats.get("rejected_by_reason", {})
    out.counter("requests_rejected", "requests refused at admission, by reason",
                [({"reason": r}, rejected.get(r, 0)) for r in sorted({*REJECT_REASONS, *rejected})])
    finished = stats.get("finished_by_reason", {})
    out.counter("sequences_finished", "sequences finished, by reason (stop, length, abort)",
                [({"reason": r}, n) for r, n in sorted(finished.items())])
    counters = stats.get("counters", {})
    for key, help_text in (("requests_added", "requests accepted by the engine"),
                           ("requests_finished", "requests that ran to completion"),
                           ("generation_tokens", "output tokens generated"),
                           ("prompt_tokens_computed", "prompt tokens computed (not cached)"),
                           ("steps", "engine steps that ran the model")):
        out.counter(key, help_text, counters.get(key, 0))
    for name, buckets in snapshot["buckets"].items():
        summary = stats.get("histograms", {}).get(name, {})
        out.histogram(name, HISTOGRAMS.get(name, name), buckets, summary.get("sum", 0.0))
    http = server.get("http_requests", {})
    out.counter("http_requests", "HTTP requests answered, by endpoint and status",
                [({"endpoint": e, "status": str(s)}, n) for (e, s), n in sorted(http.items())])
    out.counter("client_disconnects", "streams whose client went away before the end (aborted)",
                server.get("client_disconnects", 0))
    out.gauge("active_streams", "requests whose outputs are being sent", server.get("active_streams", 0))
    return out.text()


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def _series(self, name: str, kind: str, help_text: str,
                values: float | Iterable[tuple[Labels, float]]) -> None:
        self.lines += [f"# HELP trtkv_{name} {help_text}", f"# TYPE trtkv_{name} {kind}"]
        series = [({}, values)] if isinstance(values, int | float) else values
        for labels, value in series:
            self.lines.append(f"trtkv_{name}{_labels(labels)} {_num(value)}")

    def gauge(self, name: str, help_text: str, values: float | Iterable[tuple[Labels, float]]) -> None:
        self._series(name, "gauge", help_text, values)

    def counter(self, name: str, help_text: str, values: float | Iterable[tuple[Labels, float]]) -> None:
        self.lines += [f"# HELP trtkv_{name}_total {help_text}", f"# TYPE trtkv_{name}_total counter"]
        series = [({}, values)] if isinstance(values, int | float) else values
        for labels, value in series:
            self.lines.append(f"trtkv_{name}_total{_labels(labels)} {_num(value)}")

    def histogram(self, name: str, help_text: str, buckets: list[tuple[float, int]], total: float) -> None:
        self.lines += [f"# HELP trtkv_{name} {help_text}", f"# TYPE trtkv_{name} histogram"]
        for bound, count in buckets:
            self.lines.append(f'trtkv_{name}_bucket{{le="{_num(bound)}"}} {count}')
        self.lines.append(f"trtkv_{name}_sum {_num(total)}")
        self.lines.append(f"trtkv_{name}_count {buckets[-1][1] if buckets else 0}")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(value)

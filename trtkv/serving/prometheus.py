"""Engine and server metrics for Prometheus, through `prometheus_client`.

Owns the metric names and their mapping from `Engine.stats()`, the engine's histograms and the
server's own counters. Two families of names:

- ``trtkv_*``: everything trtkv measures (KV blocks, prefix cache, preemptions, rejections,
  histograms, HTTP, the shared KV store and disk tiers).
- ``vllm:*`` (with a ``model_name`` label): the names vLLM dashboards and the Kubernetes
  Gateway API Inference Extension read, with the same meaning:

  | vLLM name | trtkv source |
  |---|---|
  | vllm:num_requests_running / _waiting | requests (not sequences) running / waiting |
  | vllm:kv_cache_usage_perc | used / total device KV blocks, 0..1 |
  | vllm:prefix_cache_queries / _hits | prompt tokens looked up / found in the prefix cache |
  | vllm:num_preemptions | preemptions (recompute + swap) |
  | vllm:prompt_tokens / vllm:generation_tokens | prompt tokens computed / output tokens |
  | vllm:request_success{finished_reason} | finished sequences by reason |
  | vllm:time_to_first_token_seconds, vllm:time_per_output_token_seconds, vllm:inter_token_latency_seconds, vllm:e2e_request_latency_seconds, vllm:request_queue_time_seconds | the engine's histograms of the same meaning |
  | vllm:cache_config_info{block_size,num_gpu_blocks} | the pool's configuration (value 1) |
  | vllm:spec_decode_num_drafts / _num_draft_tokens / _num_accepted_tokens | speculative decoding: verified drafts, their tokens, the accepted ones |

Plus the standard ``process_*`` metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from trtkv.runtime.engine import Engine
from trtkv.runtime.metrics import HISTOGRAMS
from trtkv.runtime.scheduler.stats import REJECT_REASONS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: trtkv histogram -> the vLLM name of the same quantity.
_VLLM_HISTOGRAMS = {
    "time_to_first_token_seconds": "vllm:time_to_first_token_seconds",
    "time_per_output_token_seconds": "vllm:time_per_output_token_seconds",
    "inter_token_latency_seconds": "vllm:inter_token_latency_seconds",
    "e2e_request_latency_seconds": "vllm:e2e_request_latency_seconds",
    "queue_time_seconds": "vllm:request_queue_time_seconds",
}


def collect(engine: Engine) -> dict[str, Any]:
    """Everything `render` needs, read in one go (call it between steps)."""
    return {
        "stats": engine.stats(),
        "buckets": engine.histogram_buckets(),
        "block_size": engine.block_size,
    }


def render(snapshot: Mapping[str, Any], server: Mapping[str, Any], model_name: str = "") -> bytes:
    """The /metrics page.

    Args:
        snapshot: `collect(engine)`.
        server: ``{"http_requests": {(endpoint, status): n}, "client_disconnects": n,
            "active_streams": n}``.
        model_name: the served model id (the vLLM metrics' ``model_name`` label).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot, server, model_name))
    ProcessCollector(registry=registry)
    return generate_latest(registry)


class _SnapshotCollector(Collector):
    """Metric families of one snapshot (built per scrape: the values are read between steps)."""

    def __init__(self, snapshot: Mapping[str, Any], server: Mapping[str, Any], model_name: str) -> None:
        self.snapshot, self.server, self.model = snapshot, server, model_name

    def collect(self) -> Iterator[Metric]:
        yield from self._trtkv()
        yield from self._vllm()

    def _trtkv(self) -> Iterator[Metric]:
        stats = self.snapshot["stats"]
        sched = stats.get("scheduler", {})
        kv = sched.get("kv", {})

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"trtkv_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"trtkv_{name}", doc, value=value)

        yield gauge("kv_blocks_total", "KV blocks in the device pool", kv.get("num_total", 0))
        yield gauge("kv_blocks_used", "KV blocks held by sequences", kv.get("num_used", 0))
        yield gauge("kv_blocks_free", "KV blocks free for allocation", kv.get("num_free", 0))
        yield gauge("kv_usage_ratio", "fraction of device KV blocks in use", _usage(kv))
        yield gauge("kv_host_blocks_used", "KV blocks held in the host (swap) tier", kv.get("num_host_used", 0))
        yield gauge("kv_host_blocks_free", "free KV blocks in the host (swap) tier", kv.get("num_host_free", 0))
        yield gauge("prefix_cache_blocks", "device blocks carrying a prefix-cache key", kv.get("num_cached", 0))
        policy = kv.get("eviction_policy", "lru")
        evicted = CounterMetricFamily("trtkv_prefix_cache_evictions",
                                      "cached blocks whose key was dropped, by reason (capacity: reused; "
                                      "ttl: expired) and eviction policy", labels=["reason", "policy"])
        by_reason = kv.get("evictions_by_reason", {})
        for reason in sorted({"capacity", "ttl", *by_reason}):
            evicted.add_metric([reason, policy], by_reason.get(reason, 0))
        yield evicted
        yield counter("prefix_cache_evicted_age_seconds", "sum of the seconds evicted blocks had been free "
                      "(divide by trtkv_prefix_cache_evictions for the mean age)", kv.get("evicted_age_s", 0.0))
        yield counter("prefix_cache_hit_blocks", "device prefix-cache hits, in blocks", kv.get("num_hit_blocks", 0))
        yield counter("prefix_cache_query_tokens", "prompt tokens looked up in the prefix cache",
                      sched.get("num_prefix_query_tokens", 0))
        yield counter("prefix_cache_hit_tokens", "prompt tokens served from the prefix cache",
                      sched.get("num_prefix_hit_tokens", 0))
        yield gauge("requests_waiting", "requests waiting to be scheduled", sched.get("num_waiting", 0))
        yield gauge("requests_running", "sequences running", sched.get("num_running", 0))
        yield gauge("requests_swapped", "sequences swapped out to host memory", sched.get("num_swapped", 0))
        preempt = CounterMetricFamily("trtkv_preemptions", "sequences preempted for KV space, by mode",
                                      labels=["mode"])
        preempt.add_metric(["recompute"], sched.get("num_preemptions_recompute", 0))
        preempt.add_metric(["swap"], sched.get("num_preemptions_swap", 0))
        yield preempt
        rejected = stats.get("rejected_by_reason", {})
        family = CounterMetricFamily("trtkv_requests_rejected", "requests refused at admission, by reason",
                                     labels=["reason"])
        for reason in sorted({*REJECT_REASONS, *rejected}):
            family.add_metric([reason], rejected.get(reason, 0))
        yield family
        family = CounterMetricFamily("trtkv_sequences_finished", "sequences finished, by reason (stop, length, abort)",
                                     labels=["reason"])
        for reason, n in sorted(stats.get("finished_by_reason", {}).items()):
            family.add_metric([reason], n)
        yield family
        counters = stats.get("counters", {})
        for key, doc in (("requests_added", "requests accepted by the engine"),
                         ("requests_finished", "requests that ran to completion"),
                         ("generation_tokens", "output tokens generated"),
                         ("prompt_tokens_computed", "prompt tokens computed (not cached)"),
                         ("steps", "engine steps that ran the model")):
            yield counter(key, doc, counters.get(key, 0))
        spec = stats.get("speculative")
        if spec:
            for key, doc in _SPEC_COUNTERS.items():
                yield counter(key, doc, counters.get(key, 0))
            yield gauge("spec_decode_acceptance_rate", "accepted / proposed draft tokens, since start",
                        spec["acceptance_rate"])
            yield gauge("spec_decode_mean_accepted_length", "tokens a verified draft step yields per sequence "
                        "(accepted draft tokens + 1), since start", spec["mean_accepted_length"])
        for name in self.snapshot["buckets"]:
            yield self._histogram(f"trtkv_{name}", HISTOGRAMS.get(name, name), name, [], [])
        store = stats.get("kv_store")
        if store:
            for key, value in sorted(store.items()):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    yield gauge(f"kv_store_{key}", f"shared KV store tier: {key.replace('_', ' ')}", value)
            for key, value in sorted(store.get("disk", {}).items()):  # the disk tier's: hits, writes, corrupt...
                if isinstance(value, int | float):
                    yield gauge(f"kv_disk_{key}", f"disk KV tier: {key.replace('_', ' ')}", float(value))
        http = CounterMetricFamily("trtkv_http_requests", "HTTP requests answered, by endpoint and status",
                                   labels=["endpoint", "status"])
        for (endpoint, status), n in sorted(self.server.get("http_requests", {}).items()):
            http.add_metric([endpoint, str(status)], n)
        yield http
        yield counter("client_disconnects", "streams whose client went away before the end (aborted)",
                      self.server.get("client_disconnects", 0))
        yield gauge("active_streams", "requests whose outputs are being sent", self.server.get("active_streams", 0))

    def _vllm(self) -> Iterator[Metric]:
        stats = self.snapshot["stats"]
        sched = stats.get("scheduler", {})
        kv = sched.get("kv", {})
        requests = stats.get("requests", {})
        label, value = ["model_name"], [self.model]

        def gauge(name: str, doc: str, v: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"vllm:{name}", doc, labels=label)
            family.add_metric(value, v)
            return family

        def counter(name: str, doc: str, v: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"vllm:{name}", doc, labels=label)
            family.add_metric(value, v)
            return family

        yield gauge("num_requests_running", "requests running (vLLM-compatible)", requests.get("running", 0))
        yield gauge("num_requests_waiting", "requests waiting (vLLM-compatible)", requests.get("waiting", 0))
        yield gauge("kv_cache_usage_perc", "KV cache usage, 0..1 (vLLM-compatible)", _usage(kv))
        yield counter("prefix_cache_queries", "prefix cache queries, in tokens (vLLM-compatible)",
                      sched.get("num_prefix_query_tokens", 0))
        yield counter("prefix_cache_hits", "prefix cache hits, in tokens (vLLM-compatible)",
                      sched.get("num_prefix_hit_tokens", 0))
        yield counter("num_preemptions", "preemptions (vLLM-compatible)",
                      sched.get("num_preemptions_recompute", 0) + sched.get("num_preemptions_swap", 0))
        counters = stats.get("counters", {})
        yield counter("prompt_tokens", "prompt tokens computed (vLLM-compatible)", counters.get("prompt_tokens_computed", 0))
        yield counter("generation_tokens", "generation tokens (vLLM-compatible)", counters.get("generation_tokens", 0))
        if stats.get("speculative"):
            for key, doc in _SPEC_COUNTERS.items():
                yield counter(key, doc + " (vLLM-compatible)", counters.get(key, 0))
        success = CounterMetricFamily("vllm:request_success", "finished requests by reason (vLLM-compatible)",
                                      labels=["model_name", "finished_reason"])
        for reason, n in sorted(stats.get("finished_by_reason", {}).items()):
            success.add_metric([self.model, reason], n)
        yield success
        for ours, theirs in _VLLM_HISTOGRAMS.items():
            if ours in self.snapshot["buckets"]:
                yield self._histogram(theirs, HISTOGRAMS[ours] + " (vLLM-compatible)", ours, label, value)
        info = GaugeMetricFamily("vllm:cache_config_info", "KV cache configuration (vLLM-compatible)",
                                 labels=["model_name", "block_size", "num_gpu_blocks"])
        info.add_metric([self.model, str(self.snapshot.get("block_size", 0)), str(kv.get("num_total", 0))], 1)
        yield info

    def _histogram(self, name: str, doc: str, source: str, labels: list[str], values: list[str]) -> HistogramMetricFamily:
        buckets = self.snapshot["buckets"][source]
        total = self.snapshot["stats"].get("histograms", {}).get(source, {}).get("sum", 0.0)
        family = HistogramMetricFamily(name, doc, labels=labels)
        family.add_metric(values, [(_bound(b), c) for b, c in buckets], total)
        return family


_SPEC_COUNTERS = {
    "spec_decode_num_drafts": "sequence-steps that verified a draft",
    "spec_decode_num_draft_tokens": "draft tokens proposed and verified",
    "spec_decode_num_accepted_tokens": "draft tokens accepted",
}


def _usage(kv: Mapping[str, Any]) -> float:
    return kv["num_used"] / kv["num_total"] if kv.get("num_total") else 0.0


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))

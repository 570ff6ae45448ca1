"""Benchmark records -> summary figures, the printed table and the JSON document.

Definitions (all over completed requests; times in ms):
TTFT = first token - send; TPOT = (last token - first token) / (output tokens - 1);
ITL = gaps between successive streamed token steps; e2e = last byte - send.
Throughputs divide by the benchmark's duration (first send to last response).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from trtkv.bench.clients import STATUS_FAILED, STATUS_REJECTED, RequestRecord
from trtkv.bench.runner import BenchRun

PERCENTILES = (50, 95, 99)
WINDOW_S = 1.0
LATENCIES = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2e_ms", "e2e"))


def latency_samples(records: tuple[RequestRecord, ...]) -> dict[str, list[float]]:
    """Per-metric samples in ms, over the completed requests that streamed tokens."""
    out: dict[str, list[float]] = {key: [] for key, _ in LATENCIES}
    for r in records:
        if not r.is_ok or not r.chunk_times_s:
            continue
        first, last = r.chunk_times_s[0], r.chunk_times_s[-1]
        out["ttft_ms"].append((first - r.start_s) * 1e3)
        if r.num_output_tokens > 1:
            out["tpot_ms"].append((last - first) * 1e3 / (r.num_output_tokens - 1))
        out["itl_ms"].extend(float(d) * 1e3 for d in np.diff(r.chunk_times_s))
        out["e2e_ms"].append((r.end_s - r.start_s) * 1e3)
    return out


def distribution(samples: list[float]) -> dict[str, float | None]:
    """mean, p50, p95, p99 and max of ``samples`` (None each when there are none)."""
    keys = ["mean", *(f"p{p}" for p in PERCENTILES), "max"]
    if not samples:
        return dict.fromkeys(keys)
    values = [float(np.mean(samples)), *np.percentile(samples, PERCENTILES).tolist(),
              float(np.max(samples))]
    return {k: round(v, 3) for k, v in zip(keys, values, strict=True)}


def timeline(records: tuple[RequestRecord, ...], duration_s: float) -> dict[str, Any]:
    """Output tokens/s and requests in flight per ``WINDOW_S`` window of the benchmark."""
    num_windows = max(1, math.ceil(duration_s / WINDOW_S))
    tokens = np.zeros(num_windows)
    for r in records:
        for t, n in zip(r.chunk_times_s, r.chunk_tokens, strict=True):
            tokens[min(int(t // WINDOW_S), num_windows - 1)] += n
    mids = ((np.arange(num_windows) + 0.5) * WINDOW_S).tolist()
    in_flight = [sum(r.start_s <= m < r.end_s for r in records) for m in mids]
    return {"window_s": WINDOW_S, "output_tokens_per_s": (tokens / WINDOW_S).tolist(),
            "requests_in_flight": in_flight}


def summarize(run: BenchRun) -> dict[str, Any]:
    """The headline figures of ``run`` (see the module docstring for definitions)."""
    records = run.records
    ok = [r for r in records if r.is_ok]
    rejected = [r for r in records if r.status == STATUS_REJECTED]
    reasons: dict[str, int] = {}
    for r in rejected:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    failed = [r for r in records if r.status == STATUS_FAILED]
    num_in = sum(r.prompt_len for r in ok)
    num_out = sum(r.num_output_tokens for r in ok)
    duration = max(run.duration_s, 1e-9)
    samples = latency_samples(records)
    return {
        "num_requests": len(records), "completed": len(ok), "rejected": len(rejected),
        "rejected_by_reason": reasons, "failed": len(failed),
        "errors": sorted({r.error for r in failed})[:5],
        "duration_s": round(run.duration_s, 6),
        "total_input_tokens": num_in, "total_output_tokens": num_out,
        "request_throughput": round(len(ok) / duration, 4),
        "output_throughput": round(num_out / duration, 3),
        "total_token_throughput": round((num_in + num_out) / duration, 3),
        **{key: distribution(samples[key]) for key, _ in LATENCIES},
    }


def format_table(run: BenchRun, summary: dict[str, Any]) -> str:
    """A plain-text table of ``summary`` for the terminal."""
    c = run.config
    rate = "inf" if math.isinf(c.request_rate) else f"{c.request_rate:g}"
    rows = [
        ("target", f"{run.target.description} ({run.target.model_name})"),
        ("workload", f"{c.num_requests} req, prompt {c.prompt_len}, output {c.output_len}, "
                     f"range ratio {c.random_range_ratio:g}, shared prefix {c.shared_prefix_len}, "
                     f"rate {rate}/s, concurrency {c.concurrency or 'no cap'}"),
        ("completed / rejected / failed",
         f"{summary['completed']} / {summary['rejected']} / {summary['failed']}"),
        ("duration (s)", f"{summary['duration_s']:.2f}"),
        ("request throughput (req/s)", f"{summary['request_throughput']:.2f}"),
        ("output throughput (tok/s)", f"{summary['output_throughput']:.1f}"),
        ("total throughput (tok/s)", f"{summary['total_token_throughput']:.1f}"),
    ]
    if summary["rejected_by_reason"]:
        rows.append(("rejected by reason", json.dumps(summary["rejected_by_reason"])))
    lines = [f"{k:<31}{v}" for k, v in rows]
    lines.append(f"{'latency (ms)':<14}" + "".join(f"{h:>10}" for h in ("mean", "p50", "p95", "p99", "max")))
    for key, label in LATENCIES:
        dist = summary[key]
        lines.append(f"{label:<14}" + "".join(
            f"{v:>10.2f}" if v is not None else f"{'-':>10}" for v in dist.values()))
    for error in summary["errors"]:
        lines.append(f"error: {error}")
    rule = "=" * 64
    return "\n".join([rule, *lines, rule])


def to_json(run: BenchRun, summary: dict[str, Any], engine_config: Any = None) -> dict[str, Any]:
    """The whole run as a JSON-ready dict: options, target, machine, summary, timeline and
    one entry per request (the API key is never written)."""
    config = dataclasses.asdict(run.config)
    config["api_key"] = "***" if run.config.api_key else ""
    config["request_rate"] = str(run.config.request_rate) if math.isinf(run.config.request_rate) \
        else run.config.request_rate
    return {
        "format": "trtkv-bench/1",
        "config": config,
        "engine_config": dataclasses.asdict(engine_config) if engine_config is not None else None,
        "target": dataclasses.asdict(run.target),
        "machine": machine_info(),
        "summary": summary,
        "timeline": timeline(run.records, run.duration_s),
        "requests": [_request_json(r) for r in run.records],
    }


def write_json(path: str | Path, document: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")


def machine_info() -> dict[str, Any]:
    """Where the benchmark client ran: core count, CPU model, OS, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": platform.python_version()}


def _request_json(r: RequestRecord) -> dict[str, Any]:
    out = dataclasses.asdict(r)
    out["start_s"], out["end_s"] = round(r.start_s, 6), round(r.end_s, 6)
    out["chunk_times_s"] = [round(t, 6) for t in r.chunk_times_s]
    return out

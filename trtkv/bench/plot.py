"""The benchmark's PNG: latency distributions (CDFs) and throughput over time.

Imports matplotlib lazily (the ``bench`` extra), with the Agg backend (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from trtkv._optional import require
from trtkv.bench.report import latency_samples, timeline
from trtkv.bench.runner import BenchRun


def import_matplotlib() -> Any:
    """matplotlib set to the Agg backend.

    Raises:
        MissingExtraError: matplotlib is not installed (the ``bench`` extra).
    """
    matplotlib = require("matplotlib", "bench", "trtkv bench --output-png")
    matplotlib.use("Agg")
    return matplotlib


def write_png(path: str | Path, run: BenchRun, summary: dict[str, Any]) -> None:
    """Left: empirical CDFs of TTFT, ITL and e2e latency (log ms). Right: output tokens/s in
    1 s windows, with the requests in flight.

    Raises:
        MissingExtraError: matplotlib is not installed (the ``bench`` extra).
    """
    import_matplotlib()
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    samples = latency_samples(run.records)
    for key, label, color in (("ttft_ms", "TTFT", "tab:blue"), ("itl_ms", "ITL", "tab:orange"),
                              ("e2e_ms", "e2e", "tab:green")):
        values = np.sort(np.asarray(samples[key]))
        if values.size == 0:
            continue
        dist = summary[key]
        ax_lat.step(values, np.arange(1, values.size + 1) / values.size, where="post",
                    color=color, label=f"{label}: p50 {dist['p50']:.1f}, p99 {dist['p99']:.1f} ms")
    ax_lat.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax_lat.axhline(0.99, color="grey", lw=0.6, ls=":")
    ax_lat.set_xscale("log")
    ax_lat.set_xlabel("latency (ms, log scale)")
    ax_lat.set_ylabel("fraction of samples <= x")
    ax_lat.set_ylim(0, 1.01)
    ax_lat.set_title("latency distribution (completed requests)")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend(loc="lower right", fontsize=9)

    tl = timeline(run.records, run.duration_s)
    tok = np.asarray(tl["output_tokens_per_s"])
    starts = np.arange(tok.size) * tl["window_s"]
    ax_tp.bar(starts, tok, width=tl["window_s"], align="edge", color="tab:purple", alpha=0.75,
              label="output tokens/s")
    ax_tp.axhline(summary["output_throughput"], color="black", lw=1, ls="--",
                  label=f"mean {summary['output_throughput']:.0f} tok/s")
    ax_tp.set_xlabel("time since start (s)")
    ax_tp.set_ylabel(f"output tokens/s ({tl['window_s']:g} s windows)")
    ax_tp.set_title("throughput over time")
    ax_tp.grid(True, alpha=0.3)
    ax_in = ax_tp.twinx()
    ax_in.step(starts + tl["window_s"] / 2, tl["requests_in_flight"], where="mid",
               color="tab:red", lw=1.2, label="requests in flight")
    ax_in.set_ylabel("requests in flight (window midpoint)")
    ax_in.set_ylim(bottom=0)
    handles = ax_tp.get_legend_handles_labels()[0] + ax_in.get_legend_handles_labels()[0]
    ax_tp.legend(handles=handles, loc="upper left", fontsize=9)

    c = run.config
    rate = "inf" if math.isinf(c.request_rate) else f"{c.request_rate:g}"
    fig.suptitle(
        f"trtkv bench: {run.target.model_name} @ {run.target.description} | {c.num_requests} req, "
        f"prompt {c.prompt_len}, output {c.output_len}, rate {rate}/s | completed "
        f"{summary['completed']}, rejected {summary['rejected']}, failed {summary['failed']}",
        fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

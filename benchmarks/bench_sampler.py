"""Sampler time per step: 32 rows over a 49,152-token vocabulary (SmolLM2's), sampled
(temperature 0.8) and greedy, median of 15 calls.

    .venv/bin/python benchmarks/bench_sampler.py [LABEL]
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from trtkv.runtime.sampling import Sampler, SampleRow, SamplingParams, make_generator

ROWS, VOCAB = 32, 49152


def median_ms(logits: np.ndarray, temperature: float) -> float:
    rows = [SampleRow(SamplingParams(temperature=temperature, seed=i), [1, 2], [3], [make_generator(i)])
            for i in range(ROWS)]
    sampler = Sampler([0])
    sampler.sample(logits, rows)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        sampler.sample(logits, rows)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    logits = np.random.default_rng(0).normal(size=(ROWS, VOCAB)).astype(np.float32)
    label = sys.argv[1] if len(sys.argv) > 1 else "sampler"
    print(f"{label}: sampled {median_ms(logits, 0.8):.2f} ms, greedy {median_ms(logits, 0.0):.2f} ms")


if __name__ == "__main__":
    main()

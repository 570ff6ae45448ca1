"""Disk KV tier vs recompute: prefill tokens saved on a shared-prefix workload larger than
host memory, and time to first token of long shared-prefix prompts after a restart.

1. The same stream (each of several long documents plus a new question, in rounds) through
   an engine with device + host tiers only and one with a disk tier below them: prompt
   tokens computed by each.
2. A fresh engine (a server restart) serves new questions on the same documents, with the
   disk tier (prefix blocks read back from files) and without it (recomputed), alternated.

    python benchmarks/bench_disk_tier.py EXPORTED_MODEL_DIR [--prefix-tokens 768] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams


def prompts(vocab: int, num_docs: int, prefix_tokens: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    docs = [[int(t) for t in rng.integers(3, vocab, prefix_tokens)] for _ in range(num_docs)]
    return [doc + [int(t) for t in rng.integers(3, vocab, 8)] for doc in docs]


def ttft(engine: Engine, prompt: list[int]) -> tuple[float, int]:
    params = SamplingParams(temperature=0, max_new_tokens=1, ignore_eos=True)
    t0 = time.perf_counter()
    rid = engine.add_request(prompt, params)
    while True:
        for out in engine.step():
            if out.request_id == rid and out.finished:
                return time.perf_counter() - t0, out.num_cached_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--prefix-tokens", type=int, default=768)
    parser.add_argument("--num-docs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    base = dict(num_blocks=64, block_size=16, enable_prefix_caching=True, max_num_batched_tokens=4096)
    disk_dir = tempfile.mkdtemp(prefix="trtkv-disk-bench-")
    computed = {}
    for mode in ("host only", "host + disk"):
        extra = {"kv_disk_dir": disk_dir} if mode == "host + disk" else {}
        engine = Engine(args.model_dir, EngineConfig(**base, kv_offload_blocks=64, **extra))  # type: ignore[arg-type]
        vocab = engine.manifest.vocab_size
        docs = prompts(vocab, args.num_docs, args.prefix_tokens, seed=0)
        for r in range(3):  # each round: every document with a new question
            for p in docs:
                ttft(engine, p[: args.prefix_tokens] + [100 + r, 6, 7])
        computed[mode] = engine.stats()["counters"]["prompt_tokens_computed"]
        engine.close()
    total = 3 * args.num_docs * (args.prefix_tokens + 3)
    print(f"{args.model_dir}: {args.num_docs} documents of {args.prefix_tokens} tokens x 3 rounds "
          f"({total} prompt tokens; device 64 + host 64 blocks of 16 hold {128 * 16} tokens)")
    print(f"prompt tokens computed: host only {computed['host only']}, host + disk {computed['host + disk']} "
          f"({computed['host only'] / computed['host + disk']:.2f}x fewer with the disk tier); "
          f"{sum(1 for _ in Path(disk_dir).rglob('*.kvb'))} block files on disk")
    times: dict[str, list[float]] = {"recompute": [], "disk": []}
    cached: dict[str, list[int]] = {"recompute": [], "disk": []}
    for r in range(args.rounds):
        for mode in ("recompute", "disk"):  # a fresh engine each time: a restart, nothing in RAM
            extra = {"kv_offload_blocks": 64, "kv_disk_dir": disk_dir} if mode == "disk" else {}
            engine = Engine(args.model_dir, EngineConfig(**base, **extra))  # type: ignore[arg-type]
            fresh = [p[: args.prefix_tokens] + [5 + r, 6, 7] for p in prompts(vocab, args.num_docs, args.prefix_tokens, 0)]
            for p in fresh:
                t, c = ttft(engine, p)
                times[mode].append(t)
                cached[mode].append(c)
            engine.close()
    rec, disk = statistics.median(times["recompute"]), statistics.median(times["disk"])
    print(f"median TTFT: recompute {rec * 1e3:.1f} ms, disk tier {disk * 1e3:.1f} ms "
          f"({rec / disk:.2f}x); prompt tokens from disk per request: {statistics.mean(cached['disk']):.0f}")


if __name__ == "__main__":
    main()

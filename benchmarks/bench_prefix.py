"""Prefix caching on the ONNX Runtime backend: prefill tokens and TTFT, caching off vs on.

Workloads (all requests added at once, greedy, 8 output tokens each):
  shared:    64 requests = one 512-token prefix + a distinct 32-token suffix each;
  no-shared: 32 requests of 160 distinct random tokens (caching can only cost; smaller so
             that more interleaved repeats fit, since a 2% difference needs them).
Both modes use the same token budget per step (--max-num-batched-tokens). Runs alternate off/on (the machine is shared and noisy) and the report gives medians.

    .venv/bin/python benchmarks/bench_prefix.py [--repeats 3] [--max-num-batched-tokens 512]

Without --model-dir it exports the bundled tiny-stdlib checkpoint (trtkv/models) to a temp dir.
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

PARAMS = SamplingParams(temperature=0, max_new_tokens=8, ignore_eos=True)


def workload(shared: bool, num: int = 64, prefix_len: int = 512, suffix_len: int = 32,
             vocab: int = 2048, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    prefix = [int(t) for t in rng.integers(3, vocab, prefix_len)]
    prompts = []
    for _ in range(num):
        head = prefix if shared else [int(t) for t in rng.integers(3, vocab, prefix_len)]
        prompts.append(head + [int(t) for t in rng.integers(3, vocab, suffix_len)])
    return prompts


def run(model_dir: Path, prompts: list[list[int]], caching: bool, budget: int) -> dict[str, float]:
    engine = Engine(model_dir, EngineConfig(enable_prefix_caching=caching, max_num_seqs=64,
                                            max_num_batched_tokens=budget))
    engine.step()  # load / warm the session outside the timing
    start = time.monotonic()
    for p in prompts:
        engine.add_request(p, PARAMS)
    ttfts = []
    while engine.has_unfinished():
        ttfts += [o.metrics["ttft"] for o in engine.step() if o.finished]
    wall = time.monotonic() - start
    stats = engine.stats()
    return {"wall_s": wall, "mean_ttft_s": float(np.mean(ttfts)),
            "prefill_tokens": stats["counters"]["prompt_tokens_computed"],
            "hit_rate": stats["scheduler"]["prefix_hit_rate"]}


def export_default(tmp: Path) -> Path:
    from trtkv.export.exporter import ExportConfig, export

    src = Path(__file__).resolve().parents[1] / "trtkv" / "models" / "tiny-stdlib"
    export(src, tmp / "onnx", ExportConfig(progress=False))
    return tmp / "onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="shared-prefix runs per mode")
    ap.add_argument("--max-num-batched-tokens", type=int, default=512,
                    help="token budget per step (both modes)")
    ap.add_argument("--no-shared-repeats", type=int, default=7, help="no-shared runs per mode")
    ap.add_argument("--no-shared-requests", type=int, default=32, help="requests in the no-shared workload")
    ap.add_argument("--no-shared-len", type=int, default=160, help="prompt tokens per no-shared request")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or export_default(Path(tmp))
        cases = (("shared 512-token prefix, 64 x (512 + 32)", workload(True), args.repeats),
                 (f"no shared prefix, {args.no_shared_requests} x {args.no_shared_len}",
                  workload(False, args.no_shared_requests, args.no_shared_len - 32, 32), args.no_shared_repeats))
        for name, prompts, repeats in cases:
            runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for _ in range(repeats):
                for caching in (False, True):
                    runs[caching].append(run(model_dir, prompts, caching, args.max_num_batched_tokens))
            med = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for c, rs in runs.items()}
            off, on = med[False], med[True]
            print(f"## {name}: medians of {repeats} interleaved runs, "
                  f"max_num_batched_tokens={args.max_num_batched_tokens}")
            print("| caching | prefill tokens computed | mean TTFT (s) | wall (s) | hit rate |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for label, m in (("off", off), ("on", on)):
                print(f"| {label} | {m['prefill_tokens']:.0f} | {m['mean_ttft_s']:.3f} | "
                      f"{m['wall_s']:.3f} | {m['hit_rate']:.3f} |")
            print(f"prefill tokens -{100 * (1 - on['prefill_tokens'] / off['prefill_tokens']):.1f}%, "
                  f"mean TTFT {off['mean_ttft_s'] / on['mean_ttft_s']:.2f}x lower, "
                  f"wall on/off {on['wall_s'] / off['wall_s']:.3f}")
            paired = [b["wall_s"] / a["wall_s"] for a, b in zip(runs[False], runs[True], strict=True)]
            print(f"paired wall on/off (each on run vs the off run just before it): median "
                  f"{statistics.median(paired):.3f}, all {[round(x, 3) for x in paired]}")
            print("wall per run (s): off", [round(r["wall_s"], 3) for r in runs[False]],
                  "on", [round(r["wall_s"], 3) for r in runs[True]])
            print()


if __name__ == "__main__":
    main()

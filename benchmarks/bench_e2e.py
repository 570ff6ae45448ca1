"""End-to-end CPU throughput: trtkv (in-flight batching, ONNX Runtime) vs HF `generate` (static batching).

Usage: python benchmarks/bench_e2e.py [--requests 64] [--hf-batch 16] [--threads 2]

One random-weight Llama (hidden 384, 6 layers, 6 heads / 2 KV heads, vocab 4096) in fp32;
a mixed-length workload: prompt lengths uniform in [16, 384], output lengths uniform in
[16, 192], greedy, EOS ignored so both sides produce exactly the requested tokens. HF runs
the requests in arrival order in static batches (left-padded; each batch decodes until its
longest request is done, the standard static-batching waste); trtkv gets all requests at once.
Throughput counts requested output tokens only, so both sides are credited the same work.
Both run in this process on the same threads, alternating (--repeats); medians reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def _make_model(tmp: Path) -> tuple[Path, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trtkv.export.exporter import ExportConfig, export

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=4096, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                      num_key_value_heads=2, intermediate_size=1024, max_position_embeddings=1024,
                      initializer_range=0.05, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(str(tmp / "hf"))
    export(tmp / "hf", tmp / "onnx", ExportConfig(progress=False))
    return tmp / "hf", tmp / "onnx"


def _workload(n: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    return [([int(t) for t in rng.integers(3, 4096, int(rng.integers(16, 385)))], int(rng.integers(16, 193)))
            for _ in range(n)]


def run_hf(hf_dir: Path, work: list[tuple[list[int], int]], batch: int) -> tuple[float, list[list[int]]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    outs: list[list[int]] = []
    start = time.perf_counter()
    for i in range(0, len(work), batch):
        chunk = work[i:i + batch]
        width = max(len(p) for p, _ in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (p, _) in enumerate(chunk):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(n for _, n in chunk),
                                 do_sample=False, eos_token_id=None, pad_token_id=0)
        outs += [gen[r, width:width + n].tolist() for r, (_, n) in enumerate(chunk)]
    return time.perf_counter() - start, outs


def run_trtkv(model_dir: Path, work: list[tuple[list[int], int]], threads: int) -> tuple[float, list[list[int]], dict]:
    from trtkv.runtime.llm import LLM
    from trtkv.runtime.sampling import SamplingParams

    llm = LLM(model_dir, num_threads=threads, kv_cache_gib=1.0, max_num_seqs=64, max_num_batched_tokens=1024)
    params = [SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True) for _, n in work]
    start = time.perf_counter()
    outs = llm.generate([p for p, _ in work], params)
    elapsed = time.perf_counter() - start
    return elapsed, [list(o.outputs[0].token_ids) for o in outs], llm.engine.stats()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each side; medians reported")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = _workload(args.requests)
    useful = sum(n for _, n in work)
    trtkv_times, hf_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir, model_dir = _make_model(Path(tmp))
        for _ in range(args.repeats):  # alternate, so load changes hit both sides alike
            t, out_trtkv, stats = run_trtkv(model_dir, work, args.threads)
            trtkv_times.append(t)
            t, out_hf = run_hf(hf_dir, work, args.hf_batch)
            hf_times.append(t)
    t_trtkv, t_hf = float(np.median(trtkv_times)), float(np.median(hf_times))
    agree = np.mean([a == b for a, b in zip(out_trtkv, out_hf, strict=True)])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads; "
          f"{args.requests} requests, {useful} output tokens, "
          f"{sum(len(p) for p, _ in work)} prompt tokens")
    print("| engine | wall (s) | output tok/s | ratio |")
    print("|---|---|---|---|")
    print(f"| HF generate, static batches of {args.hf_batch} | {t_hf:.1f} | {useful / t_hf:.1f} | 1.00 |")
    print(f"| trtkv, in-flight batching (ORT CPU) | {t_trtkv:.1f} | {useful / t_trtkv:.1f} | {t_hf / t_trtkv:.2f} |")
    print("runs (s): trtkv", [round(t, 1) for t in trtkv_times], "HF", [round(t, 1) for t in hf_times])
    print(f"identical greedy outputs: {agree * 100:.0f}% of requests (left-padded HF batches may differ "
          "in the last bits); trtkv steps:", stats["counters"].get("steps"))


if __name__ == "__main__":
    main()

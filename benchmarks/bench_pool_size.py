"""Decode step time vs KV pool size on the ONNX Runtime backend (must be flat: O(new tokens)).

Usage: python benchmarks/bench_pool_size.py [--seqs 8] [--context 256] [--steps 30]

Exports a random-weight Llama (hidden 256, 4 layers, 4 heads / 2 KV heads, head_dim 64) once,
then for pools of 1x .. 64x the blocks the workload needs, prefills the same sequences and
times decode steps (median), interleaving pool sizes round-robin so machine noise hits all
sizes alike.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from trtkv.export.exporter import ExportConfig, export
from trtkv.manifest import Manifest
from trtkv.runtime.backends import BackendConfig, create_backend
from trtkv.runtime.plan import ScheduledSeq, StepPlan

MULTIPLIERS = (1, 4, 16, 64)


def _make_model(tmp: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=688, max_position_embeddings=4096)
    LlamaForCausalLM(cfg).save_pretrained(str(tmp / "hf"))
    export(tmp / "hf", tmp / "onnx", ExportConfig(progress=False))
    return tmp / "onnx"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--placement", choices=("packed", "spread"), default="packed",
                    help="packed: block ids as a fresh block pool hands them out; spread: random "
                         "over the whole pool (worst-case memory locality)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _make_model(Path(tmp))
        vocab = Manifest.load(model_dir).vocab_size
        bs = args.block_size
        per_seq = -(-(args.context + args.steps + 1) // bs)
        needed = per_seq * args.seqs
        rng = np.random.default_rng(0)
        prompts = [tuple(int(t) for t in rng.integers(0, vocab, args.context)) for _ in range(args.seqs)]
        runs = {}
        for mult in MULTIPLIERS:
            backend = create_backend(str(model_dir), BackendConfig(num_blocks=needed * mult, block_size=bs, num_threads=1))
            if args.placement == "spread":
                ids = rng.choice(needed * mult, size=needed, replace=False)
            else:
                ids = np.arange(needed)
            tables = [tuple(int(b) for b in ids[i * per_seq:(i + 1) * per_seq]) for i in range(args.seqs)]
            logits = backend.execute(StepPlan(seqs=tuple(ScheduledSeq(i, p, 0, tables[i], True) for i, p in enumerate(prompts))))
            runs[mult] = (backend, tables, [int(r.argmax()) for r in logits], [])
        for step in range(args.steps):
            for backend, tables, last, times in runs.values():
                plan = StepPlan(seqs=tuple(ScheduledSeq(i, (last[i],), args.context + step, tables[i], True)
                                           for i in range(args.seqs)))
                t0 = time.perf_counter()
                logits = backend.execute(plan)
                if step >= 3:  # warm-up steps are not timed
                    times.append(time.perf_counter() - t0)
                last[:] = [int(r.argmax()) for r in logits]
        base = statistics.median(runs[1][3])
        print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores; "
              f"{args.seqs} seqs x {args.context} context, block {bs}, {args.steps} decode steps, 1 ORT thread, "
              f"{args.placement} block placement")
        print("| pool (x needed) | blocks | pool MiB | median decode step (ms) | vs 1x |")
        print("|---|---|---|---|---|")
        for mult, (backend, _, _, times) in runs.items():
            mib = sum(p.nbytes for p in backend.pools) / 2**20
            med = statistics.median(times)
            print(f"| {mult}x | {backend.num_blocks} | {mib:.0f} | {med * 1e3:.2f} | {med / base:.3f} |")


if __name__ == "__main__":
    main()

"""KV-cache quantization accuracy on the trained built-in model (tiny-stdlib).

Usage: python benchmarks/bench_kv_accuracy.py [--windows 12] [--window-tokens 512] [--chunk 64]

For each KV format (fp32 baseline, fp16, bf16, fp8 and int8 with default, calibrated
per-tensor and calibrated per-head scales):
  * perplexity on held-out stdlib text, computed through the paged path: each window is fed
    in chunks of ``--chunk`` tokens, so every chunk attends to history read back from the
    (quantized) pool;
  * greedy agreement with the fp32-KV baseline: 32 tokens from 24 held-out prompts, as the
    share of positions before which no token differed (prefix agreement) and exact matches.
Calibration uses stdlib files outside the held-out set (`trtkv.export.calibrate`).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

from trtkv.eval_kv import agreement, greedy_outputs, perplexity
from trtkv.export.calibrate import calibration_texts, collect_kv_amax, scales_from_amax
from trtkv.export.exporter import ExportConfig, export
from trtkv.manifest import Manifest
from trtkv.models import DEFAULT_MODEL_DIR, heldout_text
from trtkv.runtime.backends.base import BackendConfig
from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from trtkv.runtime.engine import load_tokenizer


def greedy(model_dir: Path, manifest: Manifest, prompts: list[list[int]]) -> list[list[int]]:
    return greedy_outputs(model_dir, manifest, prompts, 32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=12)
    ap.add_argument("--window-tokens", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--calib-texts", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny"
        export(DEFAULT_MODEL_DIR, model_dir, ExportConfig(progress=False))
        base_manifest = Manifest.load(model_dir)
        tok = load_tokenizer(model_dir)
        ids = tok.encode(heldout_text(), add_special_tokens=False)
        w = args.window_tokens
        windows = [ids[i * w:(i + 1) * w] for i in range(min(args.windows, len(ids) // w))]
        prompts = [ids[i * 97:i * 97 + 48] for i in range(24)]
        calib = [tok.encode(t)[:512] for t in calibration_texts(args.calib_texts)]
        amax = {g: collect_kv_amax(model_dir, calib, g == "per-head")[:2] for g in ("per-tensor", "per-head")}
        configs: list[tuple[str, str, Manifest]] = [("fp32", "-", base_manifest)]
        configs += [(kv, "-", base_manifest.with_kv(kv)) for kv in ("fp16", "bf16")]
        for kv in ("fp8", "int8"):
            configs.append((kv, "default", base_manifest.with_kv(kv)))
            for g, (k, v) in amax.items():
                ks, vs = scales_from_amax(k, kv), scales_from_amax(v, kv)
                scales = (tuple(tuple(map(float, r)) for r in ks), tuple(tuple(map(float, r)) for r in vs))
                configs.append((kv, f"calibrated {g}", base_manifest.with_kv(kv, scales)))
        rows, base_ppl, base_out = [], 0.0, None
        blocks = -(-w // 16)
        for kv, scales, manifest in configs:
            backend = OnnxRuntimeBackend(model_dir, manifest, BackendConfig(num_blocks=blocks, block_size=16))
            ppl = perplexity(backend, windows, args.chunk)
            outs = greedy(model_dir, manifest, prompts)
            if base_out is None:
                base_ppl, base_out = ppl, outs
            pre, exact = agreement(outs, base_out)
            rows.append((kv, scales, manifest.kv_bytes_per_token(), ppl, (ppl / base_ppl - 1) * 100, pre, exact))
            print(rows[-1], flush=True)
    n_tok = sum(len(x) - 1 for x in windows)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; model tiny-stdlib (4 layers, 2 KV heads, "
          f"head_dim 64); {n_tok} held-out tokens in {len(windows)} windows fed in chunks of {args.chunk}; "
          f"{len(prompts)} greedy prompts x 32 tokens; calibration on {len(calib)} stdlib files")
    print("| KV dtype | scales | KV bytes/token | held-out ppl | vs fp32 KV | greedy prefix agreement | exact |")
    print("|---|---|---|---|---|---|---|")
    for kv, scales, nbytes, ppl, delta, pre, exact in rows:
        print(f"| {kv} | {scales} | {nbytes} | {ppl:.3f} | {delta:+.2f}% | {pre * 100:.1f}% | {exact * 100:.0f}% |")


if __name__ == "__main__":
    main()

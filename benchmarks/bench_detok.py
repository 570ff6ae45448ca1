"""Incremental detokenizing, per token: `DecodeStream` against the decode window, one run.

Streams real text (Python standard library source, encoded by the built-in model's byte-level
BPE tokenizer) through `IncrementalDetokenizer` both ways, interleaved; checks they give the
same text and prints microseconds per token.

    .venv/bin/python benchmarks/bench_detok.py [--tokens 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time

from transformers import AutoTokenizer

from trtkv.models import DEFAULT_MODEL_DIR
from trtkv.runtime.sampling import IncrementalDetokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    import asyncio
    import json as json_module

    text = inspect.getsource(json_module) + inspect.getsource(asyncio.tasks) + inspect.getsource(argparse)
    ids = tokenizer.encode(text, add_special_tokens=False)[: args.tokens]
    prompt, output = ids[:16], ids[16:]
    results: dict[str, list[float]] = {"window": [], "decode_stream": []}
    texts = {}
    for _ in range(args.rounds):
        for name, use_stream in (("window", False), ("decode_stream", True)):
            detok = IncrementalDetokenizer(tokenizer, prompt, True, use_stream=use_stream)
            start = time.perf_counter()
            pieces = [detok.push(t) for t in output]
            pieces.append(detok.flush())
            results[name].append((time.perf_counter() - start) / len(output) * 1e6)
            texts[name] = "".join(pieces)
    assert texts["window"] == texts["decode_stream"], "the two ways disagree"
    summary = {name: round(statistics.median(v), 2) for name, v in results.items()}
    summary["speedup"] = round(summary["window"] / summary["decode_stream"], 2)
    print(json.dumps({"tokens": len(output), "us_per_token_median": summary,
                      "rounds_us_per_token": {k: [round(x, 2) for x in v] for k, v in results.items()}}, indent=1))


if __name__ == "__main__":
    main()

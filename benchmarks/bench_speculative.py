"""Speculative decoding on a real model: output tokens per second against plain decoding,
measured side by side (runs alternated), with the acceptance rate, and the check that greedy
outputs are identical.

Workloads (greedy, chat template): *edit*, "rewrite this code" over a snippet of Python
source (the answer repeats most of it: where prompt lookup pays); *quote*, "repeat this
paragraph" over English prose from CPython's documentation; *free*, short questions whose
answers do not copy the prompt (what speculation costs when drafts miss).

Configurations: plain; ngram (prompt lookup, k tokens); draft (a draft model, k tokens).

    python benchmarks/bench_speculative.py --model DIR [--draft-model DIR] [--streams 1 4] [--reps 3]

Default models: the SmolLM2-135M-Instruct exports of benchmarks/bench_weights.py
(out/weights/...-none, fp32) with its int4 export as the draft (the same model at an eighth
of the weight bytes: a self-draft).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import textwrap
import time
from pathlib import Path

from trtkv.runtime.config import EngineConfig
from trtkv.runtime.llm import LLM
from trtkv.runtime.sampling import SamplingParams

WEIGHTS = Path("out/weights")


def workloads() -> dict[str, list[list[dict[str, str]]]]:
    import json
    import shutil
    from pydoc_data.topics import topics

    snippets = [inspect.getsource(f) for f in (textwrap.dedent, shutil.copyfileobj, json.dumps, statistics.median,
                                                 textwrap.indent, shutil.which)]
    edit = [[{"role": "user", "content": f"Rewrite this Python function with type hints, keeping the code the "
              f"same otherwise:\n\n{s[:1200]}"}] for s in snippets]
    paragraphs = [p.strip() for t in sorted(topics)[:40] for p in topics[t].split("\n\n") if 300 < len(p) < 700]
    quote = [[{"role": "user", "content": f"Repeat the following paragraph exactly:\n\n{p}"}] for p in paragraphs[:6]]
    free = [[{"role": "user", "content": q}] for q in (
        "What is the capital of France?", "Give me three tips for better sleep.", "What is a prime number?",
        "Why is the sky blue?", "Name a few fruits that are red.", "How do airplanes fly?")]
    return {"edit": edit, "quote": quote, "free": free}


def run(llm: LLM, convs, max_new: int) -> tuple[float, list[tuple[int, ...]], int]:
    params = SamplingParams(temperature=0, max_new_tokens=max_new)
    c0 = dict(llm.engine.stats()["counters"])
    t0 = time.perf_counter()
    outs = llm.chat(convs, params)
    seconds = time.perf_counter() - t0
    tokens = [o.outputs[0].token_ids for o in outs]
    c1 = llm.engine.stats()["counters"]
    delta = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1}
    return seconds, tokens, delta  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=WEIGHTS / "SmolLM2-135M-Instruct.Q4_1-none")
    ap.add_argument("--draft-model", type=Path, default=WEIGHTS / "SmolLM2-135M-Instruct.Q4_1-int4-acc4")
    ap.add_argument("--k", type=int, default=4, help="draft tokens per step")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4], help="concurrent requests")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    base = dict(num_threads=args.threads, kv_cache_gib=0.25, max_model_len=2048)
    configs = {
        "plain": {},
        f"ngram k={args.k}": dict(speculative_method="ngram", num_speculative_tokens=args.k),
        f"draft k={args.k}": dict(speculative_method="draft", num_speculative_tokens=args.k,
                                  draft_model=str(args.draft_model)),
    }
    llms = {name: LLM(args.model, EngineConfig(**base, **opts)) for name, opts in configs.items()}
    print(f"model {args.model.name}, draft {args.draft_model.name}, {args.threads} threads, greedy, "
          f"{args.max_new_tokens} new tokens, runs alternated x{args.reps}\n")
    print("| workload | streams | config | out tok/s | vs plain | acceptance | mean accepted length | same output |")
    print("|---|---|---|---|---|---|---|---|")
    for wname, convs in workloads().items():
        for streams in args.streams:
            batches = [convs[i:i + streams] for i in range(0, len(convs), streams)][: max(1, 2 // streams)]
            for llm in llms.values():  # warm-up
                run(llm, batches[0][:1], 4)
            times = {n: [] for n in llms}
            outs: dict[str, list] = {n: [] for n in llms}
            counters: dict[str, dict[str, int]] = {n: {} for n in llms}
            ntok = 0
            for _ in range(args.reps):
                for name, llm in llms.items():
                    total, out_all = 0.0, []
                    for b in batches:
                        s, toks, delta = run(llm, b, args.max_new_tokens)
                        total += s
                        out_all += toks
                        for k, v in delta.items():
                            counters[name][k] = counters[name].get(k, 0) + v
                    times[name].append(total)
                    outs[name] = out_all
                    if name == "plain":
                        ntok = sum(len(t) for t in out_all)
            plain = statistics.median(times["plain"])
            for name in llms:
                t = statistics.median(times[name])
                c = counters[name]
                drafts = c.get("spec_decode_num_drafts", 0)
                acc = (f"{c.get('spec_decode_num_accepted_tokens', 0) / max(c.get('spec_decode_num_draft_tokens', 0), 1):.1%}"
                       if drafts else "—")
                mal = f"{(c.get('spec_decode_num_accepted_tokens', 0) + drafts) / drafts:.2f}" if drafts else "—"
                same = "yes" if outs[name] == outs["plain"] else "NO"
                print(f"| {wname} | {streams} | {name} | {ntok / t:.1f} | {plain / t:.2f}x | {acc} | {mal} | {same} |",
                      flush=True)


if __name__ == "__main__":
    main()

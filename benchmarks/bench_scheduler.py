"""Scheduler + KV bookkeeping time per engine step, with a null model backend.

Measures what the engine pays on the CPU for `Scheduler.schedule()` + `Scheduler.update()`
(and, in the mixed case, `add_request` / `finish`) each step, at 1, 64 and 256 running
sequences. No model runs: every sampling sequence gets token 1.

Cases:
    decode: every sequence is decoding (steady state after prefill).
    mixed: sequences finish after 16-64 tokens and are replaced by new 64-512 token
        prompts, so steps mix decodes with chunked prefills (budget 2048 tokens).

Usage:
    python benchmarks/bench_scheduler.py [--steps 300] [--seqs 1 64 256] [--block-size 16]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from trtkv.runtime.kv import KVCacheManager
from trtkv.runtime.plan import SeqUpdate
from trtkv.runtime.scheduler import Scheduler, SchedulerConfig

MAX_MODEL_LEN = 4096


def make(num_seqs: int, block_size: int, prefix_caching: bool) -> Scheduler:
    config = SchedulerConfig(
        max_model_len=MAX_MODEL_LEN, max_num_seqs=num_seqs,
        max_num_batched_tokens=max(2048, num_seqs), max_num_queued_requests=10 * num_seqs,
    )
    num_blocks = num_seqs * (MAX_MODEL_LEN // block_size) + 64
    kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=prefix_caching)
    return Scheduler(config, kv)


def run_step(sched: Scheduler) -> tuple[int, list[SeqUpdate]]:
    plan = sched.schedule()
    sampled = {s.seq_id: [1] for s in plan.seqs if s.sample}
    return plan.num_tokens, sched.update(plan, sampled)


def bench_decode(num_seqs: int, steps: int, block_size: int, prefix_caching: bool) -> list[tuple[float, float]]:
    sched = make(num_seqs, block_size, prefix_caching)
    rng = random.Random(0)
    for i in range(num_seqs):
        prompt = [rng.randrange(32000) for _ in range(128)]
        sched.add_request(f"r{i}", prompt, MAX_MODEL_LEN - 128)
    num_tokens = 0
    while sched.num_waiting or num_tokens != num_seqs:  # until every sequence decodes
        num_tokens, _ = run_step(sched)
    run_step(sched)
    times = []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        num_tokens, _ = run_step(sched)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
        assert num_tokens == num_seqs, "not a steady decode state"
    return times


def bench_mixed(num_seqs: int, steps: int, block_size: int, prefix_caching: bool) -> list[tuple[float, float]]:
    sched = make(num_seqs, block_size, prefix_caching)
    rng = random.Random(0)
    next_id = 0

    # Prompts are made before timing: the benchmark times the scheduler, not the RNG.
    prompts = [[rng.randrange(32000) for _ in range(rng.randint(64, 512))] for _ in range(64)]

    def add() -> None:
        nonlocal next_id
        prompt = prompts[next_id % len(prompts)]
        sched.add_request(f"r{next_id}", prompt, rng.randint(16, 64))  # the scheduler ends it there
        next_id += 1

    for _ in range(num_seqs):
        add()
    times = []
    for step in range(steps + 50):
        t0, c0 = time.perf_counter(), time.process_time()
        _, updates = run_step(sched)
        for u in updates:
            if u.finish_reason is not None:
                add()
        if step >= 50:  # past the first wave of whole-prompt prefills
            times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seqs", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--prefix-caching", action="store_true")
    args = parser.parse_args()
    print("wall: perf_counter per step; cpu: process_time per step (ignores time the process")
    print("waits for a core on a shared machine). Figures in ms; us/seq = wall p50 / seqs.")
    print(f"{'case':<8} {'seqs':>5} {'wall p50':>9} {'wall mean':>9} {'wall p99':>9} "
          f"{'cpu p50':>8} {'us/seq':>7}")
    for case, fn in (("decode", bench_decode), ("mixed", bench_mixed)):
        for n in args.seqs:
            pairs = fn(n, args.steps, args.block_size, args.prefix_caching)
            wall = sorted(w for w, _ in pairs)
            cpu = sorted(c for _, c in pairs)
            p50, p99 = wall[len(wall) // 2] * 1e3, wall[int(len(wall) * 0.99)] * 1e3
            mean = statistics.fmean(wall) * 1e3
            cpu50 = cpu[len(cpu) // 2] * 1e3
            print(f"{case:<8} {n:>5} {p50:>9.3f} {mean:>9.3f} {p99:>9.3f} {cpu50:>8.3f} "
                  f"{p50 * 1e3 / n:>7.2f}")

if __name__ == "__main__":
    main()

"""TTFT by request class (short / long) under fcfs and short-first, on a simulated clock.

A scheduler simulation, not a model run: the null backend samples token 1 for every
sequence, a sequence finishes at its max_new_tokens, and every non-empty step costs a fixed
``--step-ms`` of simulated time (so figures are deterministic and hardware-independent).
TTFT = the end of the step that sampled a request's first token minus its arrival.

Workload (mixed): long requests (``--long-prompt`` tokens) arrive as a Poisson stream
alongside a denser stream of short ones (``--short-prompt`` tokens), both for ``--seconds``.

Usage:
    python benchmarks/bench_policies.py [--seconds 20] [--step-ms 20] [--aging 2000]
"""

from __future__ import annotations

import argparse
import random
import statistics

from trtkv.runtime.kv import KVCacheManager
from trtkv.runtime.scheduler import Scheduler, SchedulerConfig


def workload(args: argparse.Namespace) -> list[tuple[float, str, int, int]]:
    """(arrival s, class, prompt tokens, max_new_tokens), sorted by arrival."""
    rng = random.Random(0)
    reqs = []
    for cls, rate, prompt, new in (("short", args.short_rate, args.short_prompt, 32),
                                   ("long", args.long_rate, args.long_prompt, 256)):
        t = rng.expovariate(rate)
        while t < args.seconds:
            reqs.append((t, cls, rng.randint(prompt // 2, prompt), rng.randint(new // 2, new)))
            t += rng.expovariate(rate)
    return sorted(reqs)


def simulate(policy: str, args: argparse.Namespace) -> dict[str, list[float]]:
    config = SchedulerConfig(max_model_len=8192, max_num_seqs=args.max_num_seqs,
                             max_num_batched_tokens=args.budget, max_num_queued_requests=100_000,
                             scheduling_policy=policy, aging_tokens_per_s=args.aging)  # type: ignore[arg-type]
    sched = Scheduler(config, KVCacheManager(args.num_blocks, 16))
    pending = workload(args)
    cls_of: dict[int, tuple[str, float]] = {}
    ttft: dict[str, list[float]] = {"short": [], "long": []}
    left: dict[int, int] = {}
    new_of: dict[int, int] = {}
    now, i, dt = 0.0, 0, args.step_ms / 1e3
    while i < len(pending) or sched.has_unfinished():
        while i < len(pending) and pending[i][0] <= now:
            arrival, cls, prompt, new = pending[i]
            seq_id = sched.add_request(f"r{i}", [1] * prompt, new, arrival_time=arrival)
            cls_of[seq_id], left[seq_id], new_of[seq_id] = (cls, arrival), new, new
            i += 1
        plan = sched.schedule()
        sampled = {s.seq_id: [1] for s in plan.seqs if s.sample}
        updates = sched.update(plan, sampled)  # a sequence ends on its max_new_tokens-th token
        now = now + dt if not plan.is_empty else max(now + dt, pending[i][0] if i < len(pending) else now)
        for u in updates:
            cls, arrival = cls_of[u.seq_id]
            if left[u.seq_id] == new_of[u.seq_id]:
                ttft[cls].append(now - arrival)
            left[u.seq_id] -= 1
    return ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="arrival window (simulated)")
    parser.add_argument("--step-ms", type=float, default=20.0, help="simulated cost of one step")
    parser.add_argument("--short-rate", type=float, default=40.0, help="short requests per second")
    parser.add_argument("--long-rate", type=float, default=5.0, help="long requests per second")
    parser.add_argument("--short-prompt", type=int, default=128)
    parser.add_argument("--long-prompt", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--budget", type=int, default=1024, help="max_num_batched_tokens")
    parser.add_argument("--num-blocks", type=int, default=4096, help="KV blocks of 16 tokens")
    parser.add_argument("--aging", type=float, default=2000.0, help="short-first aging_tokens_per_s")
    args = parser.parse_args()
    print(f"scheduler simulation, {args.step_ms:g} ms per step (no model); TTFT in seconds")
    results = {p: simulate(p, args) for p in ("fcfs", "short-first")}
    print(f"{'class':<6} {'n':>4} {'policy':<12} {'mean':>7} {'p50':>7} {'p99':>7} {'max':>7}")
    for cls in ("short", "long"):
        for policy, ttft in results.items():
            xs = sorted(ttft[cls])
            print(f"{cls:<6} {len(xs):>4} {policy:<12} {statistics.fmean(xs):>7.2f} "
                  f"{xs[len(xs) // 2]:>7.2f} {xs[int(len(xs) * 0.99)]:>7.2f} {xs[-1]:>7.2f}")
        f, s = (statistics.fmean(results[p][cls]) for p in ("fcfs", "short-first"))
        print(f"{cls:<6} mean TTFT ratio fcfs / short-first = {f / s:.2f}")


if __name__ == "__main__":
    main()
